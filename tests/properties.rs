//! Property tests (proptest): the filter parser and the page-token decoder take any input
//! without panicking and refuse garbage with INVALID_ARGUMENT, a well-formed filter means what
//! it says, the SQLite store's SQL-compiled filters select what the Rust evaluator selects,
//! and random histories of submit / cancel / delete / wait / restart / list / store failures
//! against a real runner over SQLite keep the operation invariants of `spec/LRO.md` and
//! publish only what the store holds. The last tests
//! are fast, deterministic checks of bugs the histories found.
//!
//! Failing inputs are not persisted to a regressions file: proptest prints the minimal failing
//! case, which belongs in a named regression test.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oprun::filter::{Filter, FilterError, FilterFields, MAX_FILTER_LEN};
use oprun::model::{pack, OperationId, OperationRecord, Outcome, State};
use oprun::page_token;
use oprun::proto::google::longrunning::operation;
use oprun::proto::google::rpc::Status;
use oprun::proto::oprun::v1::{OperationMetadata, SleepInput, SleepOutput};
use oprun::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use oprun::store::{Inserted, Store};
use oprun::{Error, Registry, Runner, RunnerConfig, Submission};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use prost::Message;
use tokio::sync::{broadcast, oneshot};

use common::faults::FaultyStore;

/// `cases` cases, and no regressions file (see the module docs).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The status a ListOperations client gets for a filter the parser refused, built exactly
/// as the Operations service builds it.
fn filter_status(err: &FilterError) -> tonic::Status {
    tonic::Status::from(Error::invalid_argument_because(
        "filter",
        "INVALID_FILTER",
        err.to_string(),
    ))
}

// ---------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------

const FIELDS: &[&str] = &[
    "name",
    "done",
    "kind",
    "state",
    "error.code",
    "error",
    "create_time",
    "update_time",
    "priority",
    "metadata.kind",
    "metadata.state",
    "metadata.create_time",
    "metadata.update_time",
    "metadata.",
    "Kind",
    "bogus",
    "error.",
    ".",
];

const OPERATORS: &[&str] = &[
    "=", "!=", "<", "<=", ">", ">=", ":", "!", "==", "=<", "<>", "=!", "::",
];

const VALUES: &[&str] = &[
    "sleep",
    "\"sleep\"",
    "'sleep'",
    "sle*",
    "*ep",
    "*",
    "**",
    "\"\"",
    "''",
    "true",
    "false",
    "TRUE",
    "RUNNING",
    "QUEUED",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "running",
    "0",
    "1",
    "16",
    "17",
    "-1",
    "+3",
    "0x1",
    "2147483648",
    "-2147483649",
    "NOT_FOUND",
    "OK",
    "2026-01-02T15:04:05Z",
    "2026-01-02T15:04:05.5+01:00",
    "2026-01-02t15:04:05z",
    "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "10000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-13-40T25:61:61Z",
    "2026-01-02T15:04:05.1234567890Z",
    "2026-01-02T15:04:05+99:99",
    "operations/abc",
    "operations/*",
    "abc-123",
    "\"unterminated",
    "'mixed\"",
    "\"esc \\\" \\\\ \\'\"",
    "\"bad \\n escape\"",
    "\"\\",
    "é",
    "\u{0}",
    "日本",
];

const JOINERS: &[&str] = &[
    "AND", "OR", "NOT", "-", "--", "and", "or", "not", "(", ")", "((", "))", "()",
];

const SEPARATORS: &[&str] = &["", " ", " ", " ", "  ", "\t", "\n", "\u{a0}"];

/// Filter-like text: comparisons, operators, values, keywords and parentheses in any order,
/// valid and invalid alike.
fn grammarish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => (select(FIELDS), select(OPERATORS), select(VALUES))
            .prop_map(|(f, o, v)| format!("{f}{o}{v}")),
        2 => (select(FIELDS), select(OPERATORS), select(VALUES))
            .prop_map(|(f, o, v)| format!("{f} {o} {v}")),
        3 => select(JOINERS).prop_map(str::to_owned),
        1 => select(FIELDS).prop_map(str::to_owned),
        1 => select(OPERATORS).prop_map(str::to_owned),
        1 => select(VALUES).prop_map(str::to_owned),
    ];
    prop::collection::vec((piece, select(SEPARATORS)), 0..16)
        .prop_map(|parts| parts.into_iter().map(|(p, s)| p + s).collect())
}

/// Any text: arbitrary Unicode (control characters included), filter-like text, and long
/// text on either side of the length limit.
fn any_filter_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => prop::collection::vec(any::<char>(), 0..48).prop_map(String::from_iter),
        5 => grammarish(),
        1 => (select(&["done=true ", "(", "é", "NOT ", "\""][..]), 700usize..1100)
            .prop_map(|(p, n)| p.repeat(n)),
    ]
}

/// One operation as a filter sees it, with arbitrary values.
#[derive(Debug, Clone)]
struct Fields {
    name: String,
    done: bool,
    kind: String,
    state: String,
    error_code: Option<i32>,
    create_time: SystemTime,
    update_time: SystemTime,
    priority: i32,
}

impl Fields {
    fn view(&self) -> FilterFields<'_> {
        FilterFields {
            name: &self.name,
            done: self.done,
            kind: &self.kind,
            state: &self.state,
            error_code: self.error_code,
            create_time: self.create_time,
            update_time: self.update_time,
            priority: self.priority,
            schedule: "",
        }
    }
}

/// 2026-01-02T15:04:05Z, the instant the filter values below are written around.
const T0: u64 = 1_767_366_245;

/// A time near the instants the filters name (T0, T0 as written with +01:00, the epoch), or
/// far from them on either side.
fn any_time() -> impl Strategy<Value = SystemTime> {
    let t0 = UNIX_EPOCH + Duration::from_secs(T0);
    let t0_plus_one = UNIX_EPOCH + Duration::from_millis((T0 - 3600) * 1000 + 500);
    let near = prop_oneof![Just(t0), Just(t0_plus_one), Just(UNIX_EPOCH)];
    let offset = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_secs(1)),
        (0u64..1 << 40).prop_map(Duration::from_secs),
    ];
    (near, offset, any::<bool>()).prop_map(|(at, by, later)| if later { at + by } else { at - by })
}

fn any_fields() -> impl Strategy<Value = Fields> {
    let name = prop_oneof![
        select(&["operations/abc", "operations/xyz", "abc", "operations/", ""][..])
            .prop_map(str::to_owned),
        any::<String>(),
    ];
    let kind = prop_oneof![
        select(&["sleep", "snapshot", "sleepy", "asleep", ""][..]).prop_map(str::to_owned),
        any::<String>(),
    ];
    let state = prop_oneof![
        4 => select(STATES).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let error_code = prop_oneof![
        Just(None),
        (0..=16i32).prop_map(Some),
        any::<i32>().prop_map(Some),
    ];
    (
        name,
        any::<bool>(),
        kind,
        state,
        error_code,
        any_time(),
        any_time(),
        -3..=3i32,
    )
        .prop_map(
            |(name, done, kind, state, error_code, create_time, update_time, priority)| Fields {
                name,
                done,
                kind,
                state,
                error_code,
                create_time,
                update_time,
                priority,
            },
        )
}

const STATES: &[&str] = &["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

/// The `google.rpc.Code` names, by number.
const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Checks what the service guarantees of a refused filter: INVALID_ARGUMENT, and a 1-based
/// position inside the text (or one past its end).
fn check_refusal(text: &str, err: &FilterError) -> Result<(), TestCaseError> {
    let status = filter_status(err);
    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", err);
    prop_assert!(!err.message.is_empty());
    let chars = text.chars().count();
    prop_assert!(
        (1..=chars + 1).contains(&err.position),
        "position {} is outside 1..={} for {:?}: {}",
        err.position,
        chars + 1,
        text,
        err
    );
    Ok(())
}

/// A comparison operator of the oracle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Has,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    const EQUALITY: &'static [Cmp] = &[Cmp::Eq, Cmp::Ne, Cmp::Has];
    const ALL: &'static [Cmp] = &[
        Cmp::Eq,
        Cmp::Ne,
        Cmp::Has,
        Cmp::Lt,
        Cmp::Le,
        Cmp::Gt,
        Cmp::Ge,
    ];

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Has => ":",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }

    fn holds<T: PartialOrd>(self, actual: &T, wanted: &T) -> bool {
        match self {
            Cmp::Eq | Cmp::Has => actual == wanted,
            Cmp::Ne => actual != wanted,
            Cmp::Lt => actual < wanted,
            Cmp::Le => actual <= wanted,
            Cmp::Gt => actual > wanted,
            Cmp::Ge => actual >= wanted,
        }
    }
}

/// A well-formed filter, with its meaning computed independently of the parser.
#[derive(Debug, Clone)]
enum Expr {
    Done(Cmp, bool),
    State(Cmp, &'static str),
    /// `kind OP "value"` with an exact value.
    Kind(Cmp, &'static str),
    /// `kind = value` with a `*` at one or both ends.
    KindLike(&'static str),
    /// `name = value` for a full name or a bare id.
    Name(Cmp, &'static str),
    /// `error.code OP value`, the value written as a number or a name.
    ErrorCode(Cmp, i32, bool),
    CreateTime(Cmp, &'static str),
    Priority(Cmp, i32),
    /// `field:*`.
    Present(&'static str),
    Not(Box<Expr>, bool),
    And(Vec<Expr>, bool),
    Or(Vec<Expr>),
}

/// Timestamps as written in a filter, and the instant each names.
const TIMES: &[&str] = &[
    "2026-01-02T15:04:05Z",
    "2026-01-02T15:04:05.5+01:00",
    "1970-01-01T00:00:00Z",
];

fn time_of(text: &str) -> SystemTime {
    match text {
        "2026-01-02T15:04:05Z" => UNIX_EPOCH + Duration::from_secs(T0),
        "2026-01-02T15:04:05.5+01:00" => {
            UNIX_EPOCH + Duration::from_millis((T0 - 3600) * 1000 + 500)
        }
        _ => UNIX_EPOCH,
    }
}

fn comparison() -> impl Strategy<Value = Expr> {
    let kinds = &["sleep", "snapshot", "sleepy", ""][..];
    prop_oneof![
        (select(Cmp::EQUALITY), any::<bool>()).prop_map(|(c, v)| Expr::Done(c, v)),
        (select(Cmp::EQUALITY), select(STATES)).prop_map(|(c, v)| Expr::State(c, v)),
        (select(Cmp::EQUALITY), select(kinds)).prop_map(|(c, v)| Expr::Kind(c, v)),
        select(&["sle*", "*eep", "*lee*", "*", "**"][..]).prop_map(Expr::KindLike),
        (
            select(Cmp::EQUALITY),
            select(&["operations/abc", "abc", "xyz", "operations/xyz"][..])
        )
            .prop_map(|(c, v)| Expr::Name(c, v)),
        (select(Cmp::ALL), 0..=16i32, any::<bool>())
            .prop_map(|(c, v, by_name)| Expr::ErrorCode(c, v, by_name)),
        (select(Cmp::ALL), select(TIMES)).prop_map(|(c, v)| Expr::CreateTime(c, v)),
        (select(Cmp::ALL), -2..=2i32).prop_map(|(c, v)| Expr::Priority(c, v)),
        select(
            &[
                "done",
                "kind",
                "state",
                "error",
                "error.code",
                "name",
                "create_time"
            ][..]
        )
        .prop_map(Expr::Present),
    ]
}

fn well_formed() -> impl Strategy<Value = Expr> {
    comparison().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), any::<bool>()).prop_map(|(e, dash)| Expr::Not(Box::new(e), dash)),
            (prop::collection::vec(inner.clone(), 2..4), any::<bool>())
                .prop_map(|(parts, spelled)| Expr::And(parts, spelled)),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

impl Expr {
    /// The filter text. Every composite is parenthesized, so precedence never matters.
    fn render(&self) -> String {
        match self {
            Expr::Done(c, v) => format!("done {} {v}", c.symbol()),
            Expr::State(c, v) => format!("state{}{v}", c.symbol()),
            Expr::Kind(c, v) => format!("metadata.kind {} \"{v}\"", c.symbol()),
            Expr::KindLike(v) => format!("kind = {v}"),
            Expr::Name(c, v) => format!("name {} \"{v}\"", c.symbol()),
            Expr::ErrorCode(c, v, by_name) => {
                let value = if *by_name {
                    CODE_NAMES[usize::try_from(*v).expect("codes are 0 to 16")].to_owned()
                } else {
                    v.to_string()
                };
                format!("error.code {} {value}", c.symbol())
            }
            Expr::CreateTime(c, v) => format!("create_time {} {v}", c.symbol()),
            Expr::Priority(c, v) => format!("priority {} {v}", c.symbol()),
            Expr::Present(field) => format!("{field}:*"),
            Expr::Not(inner, dash) => {
                let keyword = if *dash { "-" } else { "NOT " };
                // AIP-160 negates a simple term only: `NOT NOT a` is a syntax error.
                match **inner {
                    Expr::Not(..) => format!("{keyword}({})", inner.render()),
                    _ => format!("{keyword}{}", inner.render()),
                }
            }
            Expr::And(parts, spelled) => {
                let joint = if *spelled { " AND " } else { " " };
                let parts: Vec<String> = parts.iter().map(Expr::render).collect();
                format!("({})", parts.join(joint))
            }
            Expr::Or(parts) => {
                let parts: Vec<String> = parts.iter().map(Expr::render).collect();
                format!("({})", parts.join(" OR "))
            }
        }
    }

    /// What the filter means, per the documented semantics (AIP-160 as `oprun::filter`
    /// describes it).
    fn eval(&self, f: &Fields) -> bool {
        match self {
            Expr::Done(c, v) => c.holds(&f.done, v),
            Expr::State(c, v) => c.holds(&f.state.as_str(), v),
            Expr::Kind(c, v) => c.holds(&f.kind.as_str(), v),
            Expr::KindLike(v) => {
                let (prefix, rest) = match v.strip_prefix('*') {
                    Some(rest) => (true, rest),
                    None => (false, *v),
                };
                let (suffix, text) = match rest.strip_suffix('*') {
                    Some(text) => (true, text),
                    None => (false, rest),
                };
                match (prefix, suffix) {
                    (false, false) => f.kind == text,
                    (false, true) => f.kind.starts_with(text),
                    (true, false) => f.kind.ends_with(text),
                    (true, true) => f.kind.contains(text),
                }
            }
            Expr::Name(c, v) => {
                let actual = if v.starts_with("operations/") {
                    f.name.as_str()
                } else {
                    f.name.strip_prefix("operations/").unwrap_or(&f.name)
                };
                c.holds(&actual, v)
            }
            Expr::ErrorCode(c, v, _) => match f.error_code {
                Some(code) => c.holds(&code, v),
                None => *c == Cmp::Ne,
            },
            Expr::CreateTime(c, v) => c.holds(&f.create_time, &time_of(v)),
            Expr::Priority(c, v) => c.holds(&f.priority, v),
            Expr::Present("error" | "error.code") => f.error_code.is_some(),
            Expr::Present(_) => true,
            Expr::Not(inner, _) => !inner.eval(f),
            Expr::And(parts, _) => parts.iter().all(|p| p.eval(f)),
            Expr::Or(parts) => parts.iter().any(|p| p.eval(f)),
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// The parser never panics on any text. A refusal reaches the client as INVALID_ARGUMENT
    /// with a position inside the filter; an accepted filter can be evaluated against any
    /// operation without panicking.
    #[test]
    fn filter_parse_never_panics_and_refuses_with_invalid_argument(
        text in any_filter_text(),
        fields in any_fields(),
    ) {
        match Filter::parse(&text) {
            Ok(filter) => {
                let _ = filter.matches(&fields.view());
                prop_assert!(text.len() <= MAX_FILTER_LEN, "over-long filter accepted");
            }
            Err(err) => check_refusal(&text, &err)?,
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// A well-formed filter (comparisons on every field, combined with AND, juxtaposition,
    /// OR, NOT and `-`) is accepted and matches exactly the operations its documented
    /// meaning selects.
    #[test]
    fn well_formed_filters_mean_what_they_say(
        expr in well_formed(),
        fields in prop::collection::vec(any_fields(), 1..8),
    ) {
        let text = expr.render();
        let filter = match Filter::parse(&text) {
            Ok(filter) => filter,
            Err(err) => return Err(TestCaseError::fail(format!("{text:?} refused: {err}"))),
        };
        for f in &fields {
            prop_assert_eq!(filter.matches(&f.view()), expr.eval(f), "{:?} on {:?}", text, f);
        }
    }

    /// Parentheses nest up to the documented 32 levels; deeper nesting is INVALID_ARGUMENT,
    /// not a stack overflow.
    #[test]
    fn nesting_is_bounded(depth in 0usize..200, negate in any::<bool>()) {
        let inner = if negate { "-done=true" } else { "done=true" };
        let text = format!("{}{inner}{}", "(".repeat(depth), ")".repeat(depth));
        match Filter::parse(&text) {
            Ok(_) => prop_assert!(depth <= 32, "depth {} accepted", depth),
            Err(err) => {
                prop_assert!(depth > 32, "depth {} refused: {}", depth, err);
                check_refusal(&text, &err)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Filters compiled to SQL
// ---------------------------------------------------------------------------------------

/// Ids of stored operations: look-alikes of each other and of the name prefix, LIKE's
/// wildcards, and upper case (the store keeps whatever id it is given).
const SQL_IDS: &[&str] = &[
    "abc",
    "abd",
    "xabc",
    "ab",
    "abcabc",
    "operations",
    "x_c",
    "a%c",
    "xyz",
    "A-b_9",
];

/// Kinds of stored operations: look-alikes, case, the empty kind, LIKE's wildcards, NUL and
/// non-ASCII text.
const SQL_KINDS: &[&str] = &[
    "sleep",
    "snapshot",
    "sleepy",
    "asleep",
    "Sleep",
    "",
    "sl%p",
    "sl_ep",
    "a\0b",
    "日本語",
];

/// Pieces of the strings filters compare: ids, kinds, fragments of them, and characters
/// that are wildcards in LIKE or GLOB.
const SQL_TEXTS: &[&str] = &[
    "abc",
    "ab",
    "bc",
    "b",
    "x",
    "xyz",
    "operations",
    "ions",
    "A-b_9",
    "a%c",
    "x_c",
    "sleep",
    "sl",
    "eep",
    "Sleep",
    "sl%p",
    "sl_ep",
    "%",
    "_",
    "?",
    "[a]",
    "a\0",
    "\0b",
    "本",
    "",
    "*",
];

/// Timestamps as written in a filter: on and between the microseconds around the instants the
/// stored times are near, with offsets, dates alone and the ends of the valid range.
const SQL_TIMES: &[&str] = &[
    "2026-01-02T15:04:05Z",
    "2026-01-02T15:04:05.000001Z",
    "2026-01-02T15:04:05.0000005Z",
    "2026-01-02T15:04:04.9999995Z",
    "2026-01-02T16:04:05+01:00",
    "2026-01-02T15:04:05.5+01:00",
    "2026-01-02",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00.000001Z",
    "1969-12-31T23:59:59.999999Z",
    "1969-12-31T23:59:59.9999995Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
];

/// `text` as a double-quoted filter string.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A comparison the parser accepts, drawn wider than the oracle's: every field spelling,
/// operator and value form, patterns made of wildcard look-alikes, and times between two
/// microseconds.
fn any_comparison() -> impl Strategy<Value = String> {
    let equality = select(&["=", "!=", ":"][..]);
    let any_op = select(&["=", "!=", ":", "<", "<=", ">", ">="][..]);
    let star = select(&["", "*"][..]);
    let name = (
        equality.clone(),
        star.clone(),
        select(&["", "operations/", "s/", "operations"][..]),
        select(SQL_TEXTS),
        star.clone(),
    )
        .prop_map(|(op, lead, prefix, text, trail)| {
            format!(
                "name{op}{}",
                quoted(&format!("{lead}{prefix}{text}{trail}"))
            )
        });
    let kind = (
        select(&["kind", "metadata.kind"][..]),
        equality.clone(),
        star.clone(),
        select(SQL_TEXTS),
        star,
    )
        .prop_map(|(field, op, lead, text, trail)| {
            format!("{field} {op} {}", quoted(&format!("{lead}{text}{trail}")))
        });
    let code = prop_oneof![
        (0..=16i32).prop_map(|n| n.to_string()),
        select(CODE_NAMES).prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => name,
        3 => kind,
        1 => (equality.clone(), any::<bool>()).prop_map(|(op, v)| format!("done{op}{v}")),
        2 => (select(&["state", "metadata.state"][..]), equality, select(STATES))
            .prop_map(|(field, op, v)| format!("{field}{op}{v}")),
        3 => (any_op.clone(), code).prop_map(|(op, v)| format!("error.code {op} {v}")),
        3 => (
            select(&["create_time", "update_time", "metadata.create_time", "metadata.update_time"][..]),
            any_op,
            select(SQL_TIMES),
        )
            .prop_map(|(field, op, v)| format!("{field}{op}{}", quoted(v))),
        1 => select(&FIELDS[..12])
            .prop_map(|field| format!("{field}:*")),
    ]
}

/// Any filter the parser accepts: comparisons negated with NOT or `-`, joined with AND, OR
/// or juxtaposition in any mix (so the parser's precedence decides the grouping), with or
/// without parentheses. The flag says whether the text is one comparison, which may be
/// negated without parentheses.
fn any_parsable() -> impl Strategy<Value = String> {
    let leaf = any_comparison().prop_map(|text| (text, true));
    let tree = leaf.prop_recursive(3, 16, 4, |inner| {
        let joint = select(&[" ", " AND ", " OR "][..]);
        prop_oneof![
            (inner.clone(), select(&["NOT ", "-"][..]), any::<bool>()).prop_map(
                |((text, simple), keyword, bare)| {
                    if simple && bare {
                        (format!("{keyword}{text}"), false)
                    } else {
                        (format!("{keyword}({text})"), false)
                    }
                }
            ),
            (prop::collection::vec((inner, joint), 2..4), any::<bool>()).prop_map(
                |(parts, grouped)| {
                    let mut text = String::new();
                    for (i, ((part, _), joint)) in parts.iter().enumerate() {
                        if i > 0 {
                            text.push_str(joint);
                        }
                        text.push_str(part);
                    }
                    if grouped {
                        (format!("({text})"), false)
                    } else {
                        (text, false)
                    }
                }
            ),
        ]
    });
    tree.prop_map(|(text, _)| text)
}

/// A time in whole microseconds (the precision of the SQLite store's time columns) near the
/// instants [`SQL_TIMES`] name, or far from them on either side.
fn any_micros_time() -> impl Strategy<Value = SystemTime> {
    let t0 = UNIX_EPOCH + Duration::from_secs(T0);
    let t0_plus_one = UNIX_EPOCH + Duration::from_millis((T0 - 3600) * 1000 + 500);
    let near = prop_oneof![Just(t0), Just(t0_plus_one), Just(UNIX_EPOCH)];
    let offset = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_micros(1)),
        Just(Duration::from_secs(1)),
        (0u64..1 << 36).prop_map(Duration::from_secs),
    ];
    (near, offset, any::<bool>()).prop_map(|(at, by, later)| if later { at + by } else { at - by })
}

/// An operation to store: any state, done ones ending with a response or an error of any
/// code (OK and codes outside google.rpc.Code included).
fn any_record() -> impl Strategy<Value = OperationRecord> {
    let state = select(
        &[
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
        ][..],
    );
    let code = prop_oneof![
        Just(None),
        (0..=16i32).prop_map(Some),
        any::<i32>().prop_map(Some),
    ];
    (
        select(SQL_IDS),
        select(SQL_KINDS),
        state,
        code,
        any_micros_time(),
        any_micros_time(),
        -3..=3i32,
    )
        .prop_map(
            |(id, kind, state, code, create_time, update_time, priority)| {
                let mut record =
                    OperationRecord::new_queued(kind.to_owned(), prost_types::Any::default(), None);
                record.id = OperationId::from_stored(id.to_owned());
                record.priority = priority;
                record.state = state;
                record.create_time = create_time;
                record.update_time = update_time;
                if state.is_done() {
                    record.end_time = Some(update_time);
                    record.outcome = Some(match code {
                        Some(code) => Outcome::Error(Status {
                            code,
                            message: "failed".to_owned(),
                            details: Vec::new(),
                        }),
                        None => Outcome::Response(prost_types::Any::default()),
                    });
                }
                record
            },
        )
}

/// Whether `record` matches `filter` by the Rust evaluator, on the fields the memory store
/// gives it.
fn rust_verdict(filter: &Filter, record: &OperationRecord) -> bool {
    filter.matches(&FilterFields {
        name: &record.id.name(),
        done: record.is_done(),
        kind: &record.kind,
        state: record.state.as_str(),
        error_code: record.error_code(),
        create_time: record.create_time,
        update_time: record.update_time,
        priority: record.priority,
        schedule: record.schedule.as_deref().unwrap_or_default(),
    })
}

/// Stores `records` (the first of each id) in a new SQLite store, lists them through `filter`
/// in pages of `page`, and checks the pages against the Rust evaluator.
fn check_sql_listing(
    text: &str,
    filter: &Filter,
    records: Vec<OperationRecord>,
    page: usize,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    rt.block_on(async {
        let options = SqliteOptions::default().durability(Durability::Normal);
        let store = SqliteStore::open(dir.path(), options).map_err(|e| fail(e.to_string()))?;
        check_listing(&store, text, filter, records, page).await
    })
}

/// Stores `records` in `store`, lists them with `filter` in pages of `page`, and checks that
/// exactly the operations the Rust evaluator selects come back, in order; closes the store
/// (whatever the verdict).
async fn check_listing<S: Store>(
    store: &S,
    text: &str,
    filter: &Filter,
    records: Vec<OperationRecord>,
    page: usize,
) -> Result<(), TestCaseError> {
    let verdict = list_as_the_evaluator_selects(store, text, filter, records, page).await;
    let closed = store.close().await.map_err(|e| fail(e.to_string()));
    verdict.and(closed)
}

async fn list_as_the_evaluator_selects<S: Store>(
    store: &S,
    text: &str,
    filter: &Filter,
    records: Vec<OperationRecord>,
    page: usize,
) -> Result<(), TestCaseError> {
    {
        let mut seen = HashSet::new();
        let mut stored = Vec::new();
        for record in records {
            if !seen.insert(record.id.clone()) {
                continue;
            }
            match store.insert(record).await {
                Ok(Inserted::New(record)) => stored.push(record),
                other => return Err(fail(format!("insert: {other:?}"))),
            }
        }
        let expected: Vec<&OperationRecord> =
            stored.iter().filter(|r| rust_verdict(filter, r)).collect();
        let mut listed = Vec::new();
        let mut after = 0;
        loop {
            let batch = store
                .list(after, filter, page)
                .await
                .map_err(|e| fail(format!("{text:?}: {e}")))?;
            prop_assert!(batch.len() <= page);
            let full = batch.len() == page;
            for record in batch {
                prop_assert!(
                    record.seq > after,
                    "{:?}: seq {} after {}",
                    text,
                    record.seq,
                    after
                );
                after = record.seq;
                listed.push(record);
            }
            if !full {
                break;
            }
        }
        let names = |records: &[&OperationRecord]| -> Vec<String> {
            records.iter().map(|r| r.id.name()).collect()
        };
        prop_assert_eq!(
            names(&listed.iter().collect::<Vec<_>>()),
            names(&expected),
            "{:?} over {} operations",
            text,
            stored.len()
        );
        for (got, want) in listed.iter().zip(expected) {
            prop_assert_eq!(got, want);
        }
        Ok(())
    }
}

/// The PostgreSQL store's filters, compiled to its SQL, select exactly what the Rust evaluator
/// selects, as the SQLite store's do: the same generated filters and operations, each case in
/// a fresh schema of a database made for this test.
#[test]
fn postgres_filters_select_what_the_evaluator_selects() {
    use oprun::store::postgres::testing::TestDatabase;
    use oprun::store::postgres::{PostgresOptions, PostgresStore};
    use proptest::test_runner::TestRunner;
    // Multi-threaded, so that each case's connections close in the background after it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let db = rt.block_on(TestDatabase::create("filters"));
    let url = db.url();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (
        prop_oneof![
            2 => well_formed().prop_map(|expr| expr.render()),
            3 => any_parsable(),
        ],
        prop::collection::vec(any_record(), 20..40),
        1usize..=40,
    );
    let mut runner = TestRunner::new(config(64));
    let result = runner.run(&strategy, |(text, records, page)| {
        let filter = Filter::parse(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?} refused: {err}")))?;
        let case = cases.fetch_add(1, Ordering::Relaxed);
        // PostgreSQL's text holds no NUL; oprun never stores one (ids are generated, kinds
        // registered, request ids checked), so the records here carry U+0001 instead. Filters
        // keep theirs.
        let records = records
            .into_iter()
            .map(|mut r| {
                let clean = |s: &str| s.replace('\0', "\u{1}");
                r.id = OperationId::from_stored(clean(r.id.as_str()));
                r.kind = clean(&r.kind);
                r.request_id = r.request_id.as_deref().map(clean);
                r
            })
            .collect::<Vec<_>>();
        rt.block_on(async {
            let options = PostgresOptions::default()
                .pool_size(2)
                .schema(format!("case_{case}"));
            let store = PostgresStore::connect(&url, options)
                .await
                .map_err(|e| fail(e.to_string()))?;
            check_listing(&store, &text, &filter, records, page).await
        })
    });
    drop(db);
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The SQLite store's filters, compiled to SQL, select exactly the operations the Rust
    /// evaluator (the memory store's) selects, in `seq` order and across pages: for
    /// well-formed filters and for any filter the parser accepts, over operations whose ids,
    /// kinds, codes and times sit on the edges the translation must get right (look-alike
    /// and wildcard-like text, NUL, case, missing and present error codes, times a
    /// microsecond either side of the filter's, sub-microsecond filter times).
    #[test]
    fn sqlite_filters_select_what_the_evaluator_selects(
        text in prop_oneof![
            2 => well_formed().prop_map(|expr| expr.render()),
            3 => any_parsable(),
        ],
        records in prop::collection::vec(any_record(), 20..40),
        page in 1usize..=40,
    ) {
        let filter = match Filter::parse(&text) {
            Ok(filter) => filter,
            Err(err) => return Err(TestCaseError::fail(format!("{text:?} refused: {err}"))),
        };
        check_sql_listing(&text, &filter, records, page)?;
    }
}

// ---------------------------------------------------------------------------------------
// Page tokens
// ---------------------------------------------------------------------------------------

/// Unpadded base64url, as page tokens are written.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// Token bodies: arbitrary bytes, and bytes shaped like a token (17 bytes, version 1) with
/// any position and filter hash, which get past the decoder's length and version checks.
fn token_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (any::<u8>(), any::<i64>(), any::<[u8; 8]>()).prop_map(|(version, seq, hash)| {
            let mut bytes = vec![version % 3];
            bytes.extend_from_slice(&seq.to_be_bytes());
            bytes.extend_from_slice(&hash);
            bytes
        }),
    ]
}

fn check_token_refusal(err: Error) -> Result<(), TestCaseError> {
    prop_assert!(matches!(err, Error::InvalidArgument { .. }), "{:?}", err);
    let status = tonic::Status::from(err);
    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    /// Decoding any text, or any bytes written as base64url, with any filter never panics;
    /// a refusal is INVALID_ARGUMENT, and an accepted token names a position ≥ 0.
    #[test]
    fn page_token_decode_never_panics_and_refuses_with_invalid_argument(
        text in any::<String>(),
        bytes in token_bytes(),
        filter in any_filter_text(),
    ) {
        for token in [text, base64url(&bytes)] {
            match page_token::decode(&token, &filter) {
                Ok(seq) => prop_assert!(seq >= 0, "{:?} decoded to {}", token, seq),
                Err(err) => check_token_refusal(err)?,
            }
        }
    }

    /// A token issued for position `seq ≥ 0` and a filter decodes to `seq` with that filter
    /// (surrounding whitespace aside), and is INVALID_ARGUMENT with any other filter. A
    /// negative position never decodes.
    #[test]
    fn page_token_round_trips_with_its_own_filter_only(
        seq in prop_oneof![0..=i64::MAX, Just(0), Just(i64::MAX)],
        negative in i64::MIN..0,
        filter in any_filter_text(),
        other in any_filter_text(),
        padding in select(&["", " ", "\t\n", "\u{3000}"][..]),
    ) {
        let token = page_token::encode(seq, &filter);
        prop_assert_eq!(page_token::decode(&token, &filter).ok(), Some(seq));
        let padded = format!("{padding}{filter}{padding}");
        prop_assert_eq!(page_token::decode(&token, &padded).ok(), Some(seq));
        if other.trim() != filter.trim() {
            match page_token::decode(&token, &other) {
                Ok(seq) => {
                    return Err(TestCaseError::fail(format!(
                        "a token for {filter:?} decoded to {seq} with {other:?}"
                    )))
                }
                Err(err) => check_token_refusal(err)?,
            }
        }
        match page_token::decode(&page_token::encode(negative, &filter), &filter) {
            Ok(seq) => {
                return Err(TestCaseError::fail(format!("negative position decoded as {seq}")))
            }
            Err(err) => check_token_refusal(err)?,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Random operation histories against a real runner
// ---------------------------------------------------------------------------------------

/// A sleep of this long cannot end by itself within the test: only a cancel or a timeout
/// ends it.
const FOREVER_MS: u64 = 60_000;

/// Request ids shared by submissions, so that some repeat a request and some conflict.
const REQUEST_IDS: &[&str] = &["rid-a", "rid-b", "rid-c"];

/// Filters a listing uses.
const LIST_FILTERS: &[&str] = &[
    "",
    "done = true",
    "done = false",
    "state = CANCELLED",
    "kind = \"sleep\"",
    "error.code = 1",
    "NOT error:*",
    "state = QUEUED OR state = RUNNING",
    "error.code != CANCELLED",
];

/// What a submission asks for: a `sleep` of `duration_ms`, and the ways it may end other than
/// with a response.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Job {
    duration_ms: u64,
    /// Fails with UNKNOWN "boom" after the sleep (not retried).
    fail: bool,
    /// The first attempt fails with UNAVAILABLE, which the kind's policy retries.
    flaky: bool,
    /// The operation's timeout: it ends DEADLINE_EXCEEDED if not done by then.
    timeout_ms: Option<u64>,
}

impl Job {
    /// The part a repeated request id compares: the kind's input (the timeout is not input).
    fn same_input(&self, other: &Job) -> bool {
        (self.duration_ms, self.fail, self.flaky) == (other.duration_ms, other.fail, other.flaky)
    }
}

#[derive(Debug, Clone)]
enum Action {
    Submit {
        job: Job,
        request_id: Option<&'static str>,
    },
    Cancel(Index),
    Delete(Index),
    Wait(Index, u64),
    Restart,
    List {
        page_size: usize,
        filter: &'static str,
    },
    /// The store refuses every write (and, with `reads`, every read) for `ms`, as a full or
    /// failing disk does; the runner's own writes and reads meet it (the history's calls come
    /// after it).
    Fault {
        reads: bool,
        ms: u64,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (
            select(&[0u64, 5, 50, 1000, FOREVER_MS][..]),
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop::option::weighted(0.2, select(&[30u64, 300][..])),
            prop::option::weighted(0.3, select(REQUEST_IDS)),
        )
            .prop_map(|(duration_ms, fail, flaky, timeout_ms, request_id)| Action::Submit {
                job: Job {
                    duration_ms,
                    fail,
                    flaky,
                    timeout_ms,
                },
                request_id,
            }),
        3 => any::<Index>().prop_map(Action::Cancel),
        2 => any::<Index>().prop_map(Action::Delete),
        2 => (any::<Index>(), select(&[0u64, 10, 60][..]))
            .prop_map(|(i, ms)| Action::Wait(i, ms)),
        1 => Just(Action::Restart),
        2 => (1usize..10, select(LIST_FILTERS))
            .prop_map(|(page_size, filter)| Action::List { page_size, filter }),
        2 => (any::<bool>(), select(&[5u64, 60, 250][..]))
            .prop_map(|(reads, ms)| Action::Fault { reads, ms }),
    ]
}

/// What the test knows of one acknowledged operation.
#[derive(Debug)]
struct Known {
    id: OperationId,
    job: Job,
    request_id: Option<&'static str>,
    /// A cancel of it was acknowledged.
    cancel_requested: bool,
    /// A delete of it succeeded.
    deleted: bool,
    /// The result and state first seen once it was done.
    outcome: Option<(operation::Result, State)>,
}

/// A real runner over SQLite in a temporary directory, and the model it is checked against.
struct History<'a> {
    dir: &'a Path,
    runner: Option<Runner>,
    /// The store the runner uses, which refuses on demand.
    faults: Arc<FaultyStore>,
    /// Checks what the runner publishes.
    publications: Option<Publications>,
    /// The done state and version of every operation published done (across restarts).
    published_done: Arc<Mutex<HashMap<OperationId, (u64, State)>>>,
    known: Vec<Known>,
    /// The live (not deleted) operation each request id belongs to.
    by_request_id: HashMap<&'static str, usize>,
}

/// Checks every change a runner publishes, as it arrives, against the store under the
/// runner (read directly, past the injected faults): the version published is stored (it was
/// durable before anyone could see it), a state published done is stored done, and no later
/// change undoes a done one.
struct Publications {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Publications {
    fn watch(
        runner: &Runner,
        store: Arc<dyn Store>,
        published_done: Arc<Mutex<HashMap<OperationId, (u64, State)>>>,
    ) -> Self {
        let mut events = runner.subscribe();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut wrong = Vec::new();
            loop {
                let event = tokio::select! {
                    biased;
                    event = events.recv() => event,
                    _ = &mut stopped => {
                        // Check what was published before the stop, then end.
                        while let Ok(event) = events.try_recv() {
                            check_publication(&event, &*store, &published_done, &mut wrong).await;
                        }
                        return wrong;
                    }
                };
                match event {
                    Ok(event) => {
                        check_publication(&event, &*store, &published_done, &mut wrong).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        wrong.push(format!("the checker fell {n} events behind"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return wrong,
                }
            }
        });
        Self { stop, task }
    }

    /// Stops checking (once what was published so far is checked) and fails on any wrong
    /// publication.
    async fn finish(self) -> Result<(), TestCaseError> {
        let _ = self.stop.send(());
        let wrong = self
            .task
            .await
            .map_err(|e| fail(format!("the publication checker failed: {e}")))?;
        prop_assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        Ok(())
    }
}

async fn check_publication(
    event: &oprun::scheduler::OperationChanged,
    store: &dyn Store,
    published_done: &Mutex<HashMap<OperationId, (u64, State)>>,
    wrong: &mut Vec<String>,
) {
    let (id, version, state) = (&event.id, event.version, event.state);
    match store.get(id).await {
        Ok(Some(stored)) => {
            if stored.version < version || (stored.version == version && stored.state != state) {
                wrong.push(format!(
                    "{id} was published at version {version} ({state:?}) while the store holds \
                     version {} ({:?})",
                    stored.version, stored.state
                ));
            }
            if event.done && (!stored.is_done() || stored.state != state) {
                wrong.push(format!(
                    "{id} was published done ({state:?}) while the store holds {:?}",
                    stored.state
                ));
            }
        }
        // Deleted since (only a done operation can be): nothing left to compare.
        Ok(None) => {}
        Err(e) => wrong.push(format!("reading {id} back failed: {e}")),
    }
    let mut done = published_done.lock().unwrap();
    if let Some(&(done_at, done_state)) = done.get(id) {
        if version > done_at && (!event.done || state != done_state) {
            wrong.push(format!(
                "{id}, published done ({done_state:?}) at version {done_at}, was published \
                 {state:?} at version {version}"
            ));
        }
    }
    if event.done {
        done.entry(id.clone()).or_insert((version, state));
    }
}

fn submission(job: &Job, request_id: Option<&str>) -> Submission {
    let input = pack(&SleepInput {
        duration: Some(prost_types::Duration {
            seconds: i64::try_from(job.duration_ms / 1000).expect("small"),
            nanos: i32::try_from((job.duration_ms % 1000) * 1_000_000).expect("small"),
        }),
        steps: 1,
        fail_message: if job.fail {
            "boom".into()
        } else {
            String::new()
        },
        fail_attempts: u32::from(job.flaky),
    });
    let mut submission =
        Submission::new("sleep", input).request_id(request_id.unwrap_or_default().to_owned());
    submission.timeout = job.timeout_ms.map(Duration::from_millis);
    submission
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

async fn start_runner(dir: &Path) -> Result<Runner, TestCaseError> {
    start_runner_over(Arc::new(open_store(dir)?)).await
}

fn open_store(dir: &Path) -> Result<SqliteStore, TestCaseError> {
    // NORMAL durability: a commit survives a process crash, which is all a graceful restart
    // needs, and the test does not pay for an fsync per commit.
    SqliteStore::open(dir, SqliteOptions::default().durability(Durability::Normal))
        .map_err(|e| fail(format!("the store does not open: {e}")))
}

async fn start_runner_over(store: Arc<dyn Store>) -> Result<Runner, TestCaseError> {
    // Two running at once, so that operations also wait in the queue.
    let config = RunnerConfig::default().max_running(2);
    Runner::start(Registry::with_builtins(), store, config)
        .await
        .map_err(|e| fail(format!("the runner does not start: {e}")))
}

impl<'a> History<'a> {
    async fn start(dir: &'a Path) -> Result<Self, TestCaseError> {
        let mut history = Self {
            dir,
            runner: None,
            faults: FaultyStore::new(Arc::new(oprun::store::memory::MemoryStore::new())),
            publications: None,
            published_done: Arc::default(),
            known: Vec::new(),
            by_request_id: HashMap::new(),
        };
        history.start_runner().await?;
        Ok(history)
    }

    /// Starts a runner over the directory's store, through a store that refuses on demand,
    /// and checks what it publishes.
    async fn start_runner(&mut self) -> Result<(), TestCaseError> {
        let store: Arc<dyn Store> = Arc::new(open_store(self.dir)?);
        self.faults = FaultyStore::new(Arc::clone(&store));
        let runner = start_runner_over(Arc::clone(&self.faults) as Arc<dyn Store>).await?;
        self.publications = Some(Publications::watch(
            &runner,
            store,
            Arc::clone(&self.published_done),
        ));
        self.runner = Some(runner);
        Ok(())
    }

    /// Stops the runner (gracefully), once what it published is checked.
    async fn stop_runner(&mut self, grace: Duration) -> Result<(), TestCaseError> {
        if let Some(publications) = self.publications.take() {
            publications.finish().await?;
        }
        let runner = self
            .runner
            .take()
            .expect("a runner is running between actions");
        runner
            .shutdown(grace)
            .await
            .map_err(|e| fail(format!("shutdown failed: {e}")))
    }

    fn runner(&self) -> &Runner {
        self.runner
            .as_ref()
            .expect("a runner is running between actions")
    }

    /// The operation an index picks, or `None` when none was acknowledged yet.
    fn pick(&self, index: &Index) -> Option<usize> {
        (!self.known.is_empty()).then(|| index.index(self.known.len()))
    }

    async fn apply(&mut self, action: &Action) -> Result<(), TestCaseError> {
        match action {
            Action::Submit { job, request_id } => self.submit(job, *request_id).await,
            Action::Cancel(index) => self.cancel(index).await,
            Action::Delete(index) => self.delete(index).await,
            Action::Wait(index, ms) => self.wait(index, Duration::from_millis(*ms)).await,
            Action::Restart => self.restart().await,
            Action::List { page_size, filter } => self.list(filter, *page_size).await,
            Action::Fault { reads, ms } => {
                self.faults.refuse_writes.store(true, Ordering::SeqCst);
                self.faults.refuse_reads.store(*reads, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                self.faults.refuse_writes.store(false, Ordering::SeqCst);
                self.faults.refuse_reads.store(false, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    async fn submit(
        &mut self,
        job: &Job,
        request_id: Option<&'static str>,
    ) -> Result<(), TestCaseError> {
        let earlier = request_id.and_then(|rid| self.by_request_id.get(rid).copied());
        let result = self.runner().submit(submission(job, request_id)).await;
        match (earlier, result) {
            (None, Ok(record)) => {
                prop_assert!(
                    self.known.iter().all(|k| k.id != record.id),
                    "a new submission got the id of an earlier operation, {}",
                    record.id
                );
                self.known.push(Known {
                    id: record.id.clone(),
                    job: *job,
                    request_id,
                    cancel_requested: false,
                    deleted: false,
                    outcome: None,
                });
                let index = self.known.len() - 1;
                if let Some(rid) = request_id {
                    self.by_request_id.insert(rid, index);
                }
                self.observe(index, &record)
            }
            (Some(index), Ok(record)) => {
                let k = &self.known[index];
                prop_assert!(
                    k.job.same_input(job),
                    "request id {:?} repeated with another input returned {} instead of \
                     ALREADY_EXISTS",
                    request_id,
                    record.id
                );
                prop_assert_eq!(
                    &record.id,
                    &k.id,
                    "a repeated request returned another operation"
                );
                self.observe(index, &record)
            }
            (Some(index), Err(Error::AlreadyExists { .. })) => {
                prop_assert!(
                    !self.known[index].job.same_input(job),
                    "an identical repeated request was refused as ALREADY_EXISTS"
                );
                Ok(())
            }
            (_, Err(e)) => Err(fail(format!("submit failed: {e:?}"))),
        }
    }

    async fn cancel(&mut self, index: &Index) -> Result<(), TestCaseError> {
        let Some(i) = self.pick(index) else {
            return self.expect_unknown_is_not_found().await;
        };
        let result = self.runner().cancel(&self.known[i].id).await;
        let k = &mut self.known[i];
        match result {
            Ok(()) => {
                prop_assert!(!k.deleted, "cancel of deleted {} succeeded", k.id);
                k.cancel_requested = true;
            }
            Err(Error::NotFound { .. }) => {
                prop_assert!(k.deleted, "cancel of {} answered NOT_FOUND", k.id)
            }
            Err(e) => return Err(fail(format!("cancel of {} failed: {e:?}", k.id))),
        }
        Ok(())
    }

    async fn delete(&mut self, index: &Index) -> Result<(), TestCaseError> {
        let Some(i) = self.pick(index) else {
            return self.expect_unknown_is_not_found().await;
        };
        let result = self.runner().delete(&self.known[i].id).await;
        let k = &mut self.known[i];
        match result {
            Ok(()) => {
                prop_assert!(!k.deleted, "{} was deleted twice", k.id);
                k.deleted = true;
                if let Some(rid) = k.request_id {
                    if self.by_request_id.get(rid) == Some(&i) {
                        self.by_request_id.remove(rid);
                    }
                }
            }
            Err(Error::NotFound { .. }) => {
                prop_assert!(k.deleted, "delete of {} answered NOT_FOUND", k.id)
            }
            Err(Error::FailedPrecondition { .. }) => {
                prop_assert!(!k.deleted, "delete of deleted {} was refused", k.id);
                prop_assert!(
                    k.outcome.is_none(),
                    "delete of {}, already seen done, was refused as not done",
                    k.id
                );
            }
            Err(e) => return Err(fail(format!("delete of {} failed: {e:?}", k.id))),
        }
        Ok(())
    }

    async fn wait(&mut self, index: &Index, timeout: Duration) -> Result<(), TestCaseError> {
        let Some(i) = self.pick(index) else {
            return self.expect_unknown_is_not_found().await;
        };
        let result = self.runner().wait(&self.known[i].id, timeout).await;
        self.check_read(i, result)
    }

    async fn restart(&mut self) -> Result<(), TestCaseError> {
        self.stop_runner(Duration::from_millis(200)).await?;
        self.start_runner().await
    }

    /// Lists everything in pages of `page_size`, passing the position on through a page
    /// token as the service does, and checks the listing as a whole.
    async fn list(&mut self, text: &str, page_size: usize) -> Result<(), TestCaseError> {
        let filter = Filter::parse(text).map_err(|e| fail(format!("{text:?}: {e}")))?;
        let mut listed = HashSet::new();
        let (mut after, mut last_seq) = (0i64, 0i64);
        for _page in 0..1000 {
            let page = self
                .runner()
                .list(&filter, after, page_size)
                .await
                .map_err(|e| fail(format!("list failed: {e:?}")))?;
            prop_assert!(page.operations.len() <= page_size);
            for record in &page.operations {
                prop_assert!(
                    listed.insert(record.id.clone()),
                    "{} listed twice with filter {:?}",
                    record.id,
                    text
                );
                prop_assert!(
                    record.seq > last_seq,
                    "listing out of order: {} after {}",
                    record.seq,
                    last_seq
                );
                last_seq = record.seq;
                let Some(i) = self.known.iter().position(|k| k.id == record.id) else {
                    return Err(fail(format!(
                        "listed {}, which was never submitted",
                        record.id
                    )));
                };
                prop_assert!(!self.known[i].deleted, "listed deleted {}", record.id);
                self.observe(i, record)?;
            }
            let Some(next) = page.next_after else {
                // Every operation that matches whatever state it is in (or, once done, that
                // matches its final state) must have been listed.
                for k in self.known.iter().filter(|k| !k.deleted) {
                    if must_match(k, &filter) {
                        prop_assert!(
                            listed.contains(&k.id),
                            "{} ({:?}) is missing from the listing with filter {:?}",
                            k.id,
                            k.outcome.as_ref().map(|(_, s)| s),
                            text
                        );
                    }
                }
                return Ok(());
            };
            prop_assert!(!page.operations.is_empty(), "an empty page promised more");
            let token = page_token::encode(next, text);
            after = page_token::decode(&token, text)
                .map_err(|e| fail(format!("own page token refused: {e}")))?;
            prop_assert_eq!(after, next);
        }
        Err(fail("the listing did not end within 1000 pages".into()))
    }

    async fn expect_unknown_is_not_found(&self) -> Result<(), TestCaseError> {
        let unknown = OperationId::generate();
        let runner = self.runner();
        for (call, result) in [
            ("get", runner.get(&unknown).await.map(drop)),
            ("cancel", runner.cancel(&unknown).await),
            ("delete", runner.delete(&unknown).await),
            (
                "wait",
                runner.wait(&unknown, Duration::ZERO).await.map(drop),
            ),
        ] {
            prop_assert!(
                matches!(result, Err(Error::NotFound { .. })),
                "{} of an unknown operation: {:?}",
                call,
                result
            );
        }
        Ok(())
    }

    /// Checks a Get or Wait answer for operation `i`.
    fn check_read(
        &mut self,
        i: usize,
        result: Result<OperationRecord, Error>,
    ) -> Result<(), TestCaseError> {
        let k = &self.known[i];
        match result {
            Ok(record) => {
                prop_assert!(!k.deleted, "deleted {} is still readable", k.id);
                self.observe(i, &record)
            }
            Err(Error::NotFound { .. }) => {
                prop_assert!(
                    k.deleted,
                    "{} is NOT_FOUND but was never deleted (cancelled: {})",
                    k.id,
                    k.cancel_requested
                );
                Ok(())
            }
            Err(e) => Err(fail(format!("reading {} failed: {e:?}", k.id))),
        }
    }

    /// Reads every acknowledged operation and checks it.
    async fn check_all(&mut self) -> Result<(), TestCaseError> {
        for i in 0..self.known.len() {
            let result = self.runner().get(&self.known[i].id).await;
            self.check_read(i, result)?;
        }
        Ok(())
    }

    /// Checks one view of operation `i` against the invariants and what was seen before.
    fn observe(&mut self, i: usize, record: &OperationRecord) -> Result<(), TestCaseError> {
        let k = &mut self.known[i];
        prop_assert_eq!(&record.id, &k.id);
        prop_assert_eq!(
            record.is_done(),
            record.outcome.is_some(),
            "{} in state {:?} with outcome {:?}",
            k.id,
            record.state,
            record.outcome
        );
        let op = record.to_operation();
        prop_assert_eq!(&op.name, &k.id.name());
        prop_assert_eq!(op.done, record.is_done());
        // On the wire: done with exactly one of error/response (a oneof, so at most one),
        // not done with neither.
        prop_assert_eq!(
            op.done,
            op.result.is_some(),
            "{} done={} result={:?}",
            k.id,
            op.done,
            op.result
        );
        let metadata = op
            .metadata
            .as_ref()
            .ok_or_else(|| fail(format!("{} has no metadata", k.id)))?;
        prop_assert_eq!(
            &metadata.type_url,
            "type.googleapis.com/oprun.v1.OperationMetadata"
        );
        let metadata = OperationMetadata::decode(metadata.value.as_slice())
            .map_err(|e| fail(format!("{} metadata does not decode: {e}", k.id)))?;
        prop_assert_eq!(metadata.state, record.state.to_proto() as i32);
        if !k.cancel_requested {
            prop_assert!(
                !metadata.requested_cancellation,
                "{} reports a cancel nobody requested",
                k.id
            );
        }
        if let Some((result, state)) = &k.outcome {
            prop_assert!(
                op.done,
                "{} was done ({:?}) and is not any more: {:?} at version {}",
                k.id,
                state,
                record.state,
                record.version
            );
            prop_assert_eq!(
                op.result.as_ref(),
                Some(result),
                "the result of {} changed",
                k.id
            );
            prop_assert_eq!(record.state, *state, "the final state of {} changed", k.id);
            return Ok(());
        }
        let Some(result) = op.result else {
            return Ok(());
        };
        match &result {
            operation::Result::Error(status) => {
                prop_assert!(status.code != 0, "{} failed with code OK", k.id);
                prop_assert_eq!(
                    status.code == 1,
                    record.state == State::Cancelled,
                    "{} ended {:?} with {:?}",
                    k.id,
                    record.state,
                    status
                );
                // Which errors the job allows: "boom" (or "boom (attempt N)" when a restart
                // interrupted it), CANCELLED only after a cancel, DEADLINE_EXCEEDED only with
                // a timeout, and UNAVAILABLE only when a timeout left no time to retry.
                let allowed = match status.code {
                    1 => k.cancel_requested,
                    2 => k.job.fail && status.message.starts_with("boom"),
                    4 => k.job.timeout_ms.is_some(),
                    14 => k.job.flaky && k.job.timeout_ms.is_some(),
                    _ => false,
                };
                prop_assert!(
                    allowed,
                    "{} ({:?}, cancelled: {}) ended with {:?}",
                    k.id,
                    k.job,
                    k.cancel_requested,
                    status
                );
                if status.code != 1 {
                    prop_assert_eq!(record.state, State::Failed);
                }
            }
            operation::Result::Response(any) => {
                prop_assert!(!k.job.fail, "{}, made to fail, succeeded", k.id);
                prop_assert!(
                    k.job.duration_ms < FOREVER_MS,
                    "{}, a sleep of {} ms, succeeded already",
                    k.id,
                    k.job.duration_ms
                );
                prop_assert_eq!(record.state, State::Succeeded);
                prop_assert_eq!(&any.type_url, "type.googleapis.com/oprun.v1.SleepOutput");
                let output = SleepOutput::decode(any.value.as_slice())
                    .map_err(|e| fail(format!("{} response does not decode: {e}", k.id)))?;
                prop_assert_eq!(output.steps_done, 1);
            }
        }
        k.outcome = Some((result, record.state));
        Ok(())
    }

    /// Ends the history: cancels everything still running, which must then end (CANCELLED,
    /// or with its real result if it finished first), and shuts down.
    async fn finish(mut self) -> Result<(), TestCaseError> {
        for i in 0..self.known.len() {
            if self.known[i].deleted || self.known[i].outcome.is_some() {
                continue;
            }
            let result = self.runner().cancel(&self.known[i].id).await;
            prop_assert!(result.is_ok(), "final cancel: {:?}", result);
            self.known[i].cancel_requested = true;
            let result = self
                .runner()
                .wait(&self.known[i].id, Duration::from_secs(10))
                .await;
            self.check_read(i, result)?;
            prop_assert!(
                self.known[i].outcome.is_some(),
                "{} is not done 10 s after its cancel",
                self.known[i].id
            );
        }
        self.check_all().await?;
        prop_assert_eq!(
            unfinished_once_settled(self.runner()).await,
            0,
            "the runner still counts operations as unfinished after every one was seen done"
        );
        self.stop_runner(Duration::from_secs(5)).await
    }
}

/// Whether operation `k` matches `filter` in every state it may be in now: its final state
/// once seen done, otherwise any state it could still reach.
/// What the runner counts as unfinished once its counts have caught up with the store: they
/// follow the store's answers to this node's writes, and a read may see a write committed
/// before its answer arrived. Waits for the count to reach zero, up to 10 s.
async fn unfinished_once_settled(runner: &Runner) -> usize {
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while runner.unfinished() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let _ = settled.await;
    runner.unfinished()
}

fn must_match(k: &Known, filter: &Filter) -> bool {
    let name = k.id.name();
    let now = SystemTime::now();
    let fields = |state: State, error_code: Option<i32>| FilterFields {
        name: &name,
        done: state.is_done(),
        kind: "sleep",
        state: state.as_str(),
        error_code,
        create_time: now,
        update_time: now,
        priority: 0,
        schedule: "",
    };
    let error_code = |result: &operation::Result| match result {
        operation::Result::Error(status) => Some(status.code),
        operation::Result::Response(_) => None,
    };
    match &k.outcome {
        Some((result, state)) => filter.matches(&fields(*state, error_code(result))),
        None => [
            fields(State::Queued, None),
            fields(State::Running, None),
            fields(State::Succeeded, None),
            fields(State::Failed, Some(2)),
            fields(State::Failed, Some(4)),
            fields(State::Failed, Some(14)),
            fields(State::Cancelled, Some(1)),
        ]
        .iter()
        .all(|f| filter.matches(f)),
    }
}

fn run_history(actions: &[Action]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let result = rt.block_on(async {
        let mut history = History::start(dir.path()).await?;
        for (step, action) in actions.iter().enumerate() {
            let checked = match history.apply(action).await {
                Ok(()) => history.check_all().await,
                Err(e) => Err(e),
            };
            checked.map_err(|e| fail(format!("at step {step}, {action:?}: {e}")))?;
        }
        history
            .finish()
            .await
            .map_err(|e| fail(format!("after the last step: {e}")))
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

proptest! {
    #![proptest_config(ProptestConfig {
        max_shrink_iters: 256,
        ..config(64)
    })]

    /// Any history of submit (sleeps that succeed, fail, fail once and are retried, or time
    /// out; some with a repeated request id), cancel, delete, wait, restart and paged list
    /// keeps the LRO invariants, checked after every step by reading
    /// every acknowledged operation: an operation is NOT_FOUND only after a successful
    /// delete (a cancel never deletes); once done it stays done with the same result, across
    /// restarts too; done means exactly one of error or response, not done neither; error
    /// code 1 means CANCELLED after a client's cancel; a delete is refused as not done only
    /// before the operation was seen done; a paged listing never repeats or reorders an
    /// operation and holds every operation that matches its filter throughout; and every
    /// operation still running ends once cancelled.
    #[test]
    fn random_histories_keep_the_operation_invariants(
        actions in prop::collection::vec(action(), 1..40),
    ) {
        run_history(&actions)?;
    }
}

// ---------------------------------------------------------------------------------------
// Regressions found by the histories above, as fast deterministic checks
// ---------------------------------------------------------------------------------------

/// A runner restarted in the same process on the same data directory (shutdown, drop, open,
/// start) accepts a submission with a request id at once, instead of answering UNAVAILABLE
/// "database is locked" while the previous store is still letting go of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_accepts_a_request_id_at_once() {
    for round in 0..100 {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let first = start_runner(dir.path()).await.expect("the runner starts");
        first
            .shutdown(Duration::from_millis(200))
            .await
            .expect("the runner shuts down");
        drop(first);
        let second = start_runner(dir.path()).await.expect("the runner restarts");
        let job = Job {
            duration_ms: 0,
            fail: false,
            flaky: false,
            timeout_ms: None,
        };
        let submitted = second.submit(submission(&job, Some("rid-a"))).await;
        assert!(
            submitted.is_ok(),
            "round {round}: the first submission after a restart failed: {submitted:?}"
        );
        second
            .shutdown(Duration::from_secs(5))
            .await
            .expect("the runner shuts down");
    }
}

/// Once Wait has returned an operation as done, the runner no longer counts it as
/// unfinished and DeleteOperation accepts it: no window in which a done operation is
/// refused as "not done".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_seen_done_is_deletable_at_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runner = start_runner(dir.path()).await.expect("the runner starts");
    let job = Job {
        duration_ms: 0,
        fail: false,
        flaky: false,
        timeout_ms: None,
    };
    for round in 0..200 {
        let record = runner
            .submit(submission(&job, None))
            .await
            .expect("the submission is accepted");
        let done = runner
            .wait(&record.id, Duration::from_secs(10))
            .await
            .expect("the operation exists");
        assert!(done.is_done(), "round {round}: not done after 10 s");
        assert_eq!(
            unfinished_once_settled(&runner).await,
            0,
            "round {round}: {} was returned done but is still counted as unfinished",
            record.id
        );
        let deleted = runner.delete(&record.id).await;
        assert!(
            deleted.is_ok(),
            "round {round}: delete of {}, returned done by Wait, failed: {deleted:?}",
            record.id
        );
    }
    runner
        .shutdown(Duration::from_secs(5))
        .await
        .expect("the runner shuts down");
}

// ---------------------------------------------------------------------------------------
// SubmitTask's times (issue 6, item 4)
// ---------------------------------------------------------------------------------------

/// Seconds and nanos of every kind: near zero, at and past the documented edges, and the
/// extremes of their types.
fn any_seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        -5i64..5,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(315_576_000_000),
        Just(315_576_000_001),
        Just(250_000_000_000),
        Just(-315_576_000_001),
        Just(253_402_300_799),
        Just(253_402_300_800),
        Just(-62_135_596_800),
        Just(-62_135_596_801),
        any::<i64>(),
    ]
}

fn any_nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(999_999_999),
        Just(1_000_000_000),
        Just(-1),
        Just(-999_999_999),
        Just(i32::MAX),
        Just(i32::MIN),
        any::<i32>(),
    ]
}

/// Whether a `Duration` lies in its documented range with consistent signs, is positive, and
/// ends (from now) no later than the latest valid Timestamp.
fn positive_duration(seconds: i64, nanos: i32) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // In range, and non-negative with at least one part positive (a positive duration's
    // nanos cannot be negative).
    seconds <= 315_576_000_000
        && (0..1_000_000_000).contains(&nanos)
        && seconds >= 0
        && (seconds > 0 || nanos > 0)
        && seconds < 253_402_300_799 - now
}

/// Whether a `Timestamp` lies in 0001-01-01..=9999-12-31 with nanos in 0..1e9.
fn valid_timestamp(seconds: i64, nanos: i32) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&seconds) && (0..1_000_000_000).contains(&nanos)
}

proptest! {
    #![proptest_config(config(200))]

    /// Any `timeout` and `not_before` SubmitTask may carry is accepted exactly when it lies in
    /// the documented range, and otherwise refused with INVALID_ARGUMENT naming the field;
    /// never a panic (the reset stream of before), never another code.
    #[test]
    fn submit_times_are_in_range_or_invalid_argument(
        timeout in proptest::option::of((any_seconds(), any_nanos())),
        not_before in proptest::option::of((any_seconds(), any_nanos())),
    ) {
        let (rt, addr) = submit_server();
        let result = rt.block_on(async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            oprun::proto::oprun::v1::task_service_client::TaskServiceClient::new(channel)
                .submit_task(oprun::proto::oprun::v1::SubmitTaskRequest {
                    kind: "sleep".into(),
                    input: Some(pack(&SleepInput::default())),
                    timeout: timeout.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
                    not_before: not_before
                        .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    ..Default::default()
                })
                .await
        });
        let timeout_ok = timeout.is_none_or(|(s, n)| positive_duration(s, n));
        let not_before_ok = not_before.is_none_or(|(s, n)| valid_timestamp(s, n));
        match result {
            Ok(_) => prop_assert!(timeout_ok && not_before_ok, "accepted {timeout:?} {not_before:?}"),
            Err(status) => {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "{:?}", status);
                prop_assert!(!(timeout_ok && not_before_ok), "refused valid times: {:?}", status);
                // The field named is one at fault (either, when both are).
                let names_timeout = status.message().starts_with("timeout");
                let names_not_before = status.message().starts_with("not_before");
                prop_assert!(
                    (names_timeout && !timeout_ok) || (names_not_before && !not_before_ok),
                    "{}",
                    status.message()
                );
            }
        }
    }
}

/// One server for every case of the SubmitTask property (a memory store; delayed operations
/// simply wait), on its own runtime.
fn submit_server() -> (&'static tokio::runtime::Runtime, std::net::SocketAddr) {
    static SERVER: std::sync::OnceLock<(tokio::runtime::Runtime, std::net::SocketAddr)> =
        std::sync::OnceLock::new();
    let (rt, addr) = SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let runner = Runner::start(
                Registry::with_builtins(),
                Arc::new(oprun::store::memory::MemoryStore::new()),
                RunnerConfig::default(),
            )
            .await
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(oprun::server::serve(
                listener,
                runner,
                std::future::pending(),
                Duration::from_secs(1),
            ));
            addr
        });
        (rt, addr)
    });
    (rt, *addr)
}
