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

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

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

/// The operation states, by enum value name.
const STATES: [&str; 5] = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

/// The `google.rpc.Code` names, indexed by code number.
const CODE_NAMES: [&str; 17] = [
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

/// A boolean combination of tests.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Test(Test),
}

impl Expr {
    fn eval(&self, fields: &FilterFields<'_>) -> bool {
        match self {
            Expr::And(parts) => parts.iter().all(|part| part.eval(fields)),
            Expr::Or(parts) => parts.iter().any(|part| part.eval(fields)),
            Expr::Not(inner) => !inner.eval(fields),
            Expr::Test(test) => test.eval(fields),
        }
    }

    /// Joins `parts` with AND, flattening nested ANDs; a single part stands alone.
    fn all(parts: Vec<Expr>) -> Expr {
        Self::join(parts, true)
    }

    /// Joins `parts` with OR, flattening nested ORs; a single part stands alone.
    fn any(parts: Vec<Expr>) -> Expr {
        Self::join(parts, false)
    }

    fn join(mut parts: Vec<Expr>, and: bool) -> Expr {
        if parts.len() == 1 {
            if let Some(only) = parts.pop() {
                return only;
            }
        }
        let mut flat = Vec::with_capacity(parts.len());
        for part in parts {
            match (part, and) {
                (Expr::And(inner), true) | (Expr::Or(inner), false) => flat.extend(inner),
                (other, _) => flat.push(other),
            }
        }
        if and {
            Expr::And(flat)
        } else {
            Expr::Or(flat)
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `:`; equality unless the value is `*`.
    Has,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }

    /// Compares `actual` with `wanted`; `:` means equality.
    fn compare<T: PartialOrd>(self, actual: &T, wanted: &T) -> bool {
        match self {
            Op::Eq | Op::Has => actual == wanted,
            Op::Ne => actual != wanted,
            Op::Lt => actual < wanted,
            Op::Le => actual <= wanted,
            Op::Gt => actual > wanted,
            Op::Ge => actual >= wanted,
        }
    }

    /// Whether the operator is `=`, `!=` or `:`.
    fn is_equality(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Has)
    }
}

/// A string value with an optional `*` wildcard at its start and/or end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    any_prefix: bool,
    any_suffix: bool,
}

impl Pattern {
    fn new(value: &str) -> Pattern {
        let (any_prefix, rest) = match value.strip_prefix('*') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let (any_suffix, text) = match rest.strip_suffix('*') {
            Some(text) => (true, text),
            None => (false, rest),
        };
        Pattern {
            text: text.to_owned(),
            any_prefix,
            any_suffix,
        }
    }

    fn matches(&self, actual: &str) -> bool {
        match (self.any_prefix, self.any_suffix) {
            (false, false) => actual == self.text,
            (false, true) => actual.starts_with(&self.text),
            (true, false) => actual.ends_with(&self.text),
            (true, true) => actual.contains(&self.text),
        }
    }
}

/// One typed comparison of an operation field.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// A presence test of a field that every operation has.
    Always,
    /// `name`; `bare` compares with the ID after `operations/`.
    Name {
        negate: bool,
        bare: bool,
        pattern: Pattern,
    },
    Kind {
        negate: bool,
        pattern: Pattern,
    },
    Done {
        negate: bool,
        value: bool,
    },
    State {
        negate: bool,
        value: &'static str,
    },
    ErrorCode {
        op: Op,
        value: i32,
    },
    HasError,
    CreateTime {
        op: Op,
        value: SystemTime,
    },
    UpdateTime {
        op: Op,
        value: SystemTime,
    },
    Priority {
        op: Op,
        value: i32,
    },
    /// `schedule`, its pattern on the full name (`schedules/ID`).
    Schedule {
        negate: bool,
        pattern: Pattern,
    },
}

impl Test {
    fn eval(&self, fields: &FilterFields<'_>) -> bool {
        match self {
            Test::Always => true,
            Test::Name {
                negate,
                bare,
                pattern,
            } => {
                let actual = if *bare {
                    fields.name.strip_prefix(NAME_PREFIX).unwrap_or(fields.name)
                } else {
                    fields.name
                };
                pattern.matches(actual) != *negate
            }
            Test::Kind { negate, pattern } => pattern.matches(fields.kind) != *negate,
            Test::Done { negate, value } => (fields.done == *value) != *negate,
            Test::State { negate, value } => (fields.state == *value) != *negate,
            Test::ErrorCode { op, value } => match fields.error_code {
                Some(code) => op.compare(&code, value),
                None => *op == Op::Ne,
            },
            Test::HasError => fields.error_code.is_some(),
            Test::CreateTime { op, value } => op.compare(&fields.create_time, value),
            Test::UpdateTime { op, value } => op.compare(&fields.update_time, value),
            Test::Priority { op, value } => op.compare(&fields.priority, value),
            Test::Schedule { negate, pattern } => pattern.matches(fields.schedule) != *negate,
        }
    }
}

/// A filterable field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Done,
    Kind,
    State,
    ErrorCode,
    Error,
    CreateTime,
    UpdateTime,
    Priority,
    Schedule,
}

impl Field {
    fn resolve(word: &str) -> Option<Field> {
        let field = match word {
            "name" => Field::Name,
            "done" => Field::Done,
            "error.code" => Field::ErrorCode,
            "error" => Field::Error,
            other => match other.strip_prefix("metadata.").unwrap_or(other) {
                "kind" => Field::Kind,
                "state" => Field::State,
                "create_time" => Field::CreateTime,
                "update_time" => Field::UpdateTime,
                "priority" => Field::Priority,
                "schedule" => Field::Schedule,
                _ => return None,
            },
        };
        Some(field)
    }

    /// The field's type and name, as in `string field name`.
    fn describe(self) -> &'static str {
        match self {
            Field::Name => "string field name",
            Field::Kind => "string field kind",
            Field::Done => "boolean field done",
            Field::State => "enum field state",
            Field::ErrorCode => "integer field error.code",
            Field::Error => "message field error",
            Field::CreateTime => "timestamp field create_time",
            Field::UpdateTime => "timestamp field update_time",
            Field::Priority => "integer field priority",
            Field::Schedule => "string field schedule",
        }
    }
}

/// A lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    /// `-` at the start of a term: negation.
    Minus,
    Op(Op),
    /// A bare word: a field name, a keyword or an unquoted value.
    Word(String),
    /// A quoted string, unescaped.
    Str(String),
    End,
}

impl Tok {
    /// How the token reads in an error message.
    fn describe(&self) -> String {
        match self {
            Tok::LParen => "\"(\"".to_owned(),
            Tok::RParen => "\")\"".to_owned(),
            Tok::Minus => "\"-\"".to_owned(),
            Tok::Op(op) => format!("\"{}\"", op.symbol()),
            Tok::Word(word) => format!("\"{}\"", escape(word)),
            Tok::Str(text) => format!("quoted string \"{}\"", escape(text)),
            Tok::End => "end of filter".to_owned(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Tok::Word(word) if word == keyword)
    }
}

/// A token and the 1-based character position where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    tok: Tok,
    pos: usize,
}

/// Escapes `"` and `\` for quoting a value in an error message.
/// `text` with `"` and `\\` escaped, for quoting in an error message; long text is cut to its
/// first [`crate::text::QUOTE_CHARS`] characters, "…" and its length in bytes.
fn escape(text: &str) -> String {
    let shown = match text.char_indices().nth(crate::text::QUOTE_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    if shown.len() < text.len() {
        out.push_str(&format!("…({} bytes)", text.len()));
    }
    out
}

/// Splits the filter into tokens. Which characters end a bare word depends on
/// whether a term (field name, keyword, parenthesis) or a value is expected, so the
/// parser asks for one or the other.
struct Lexer {
    chars: Vec<char>,
    /// The index of the next unread character.
    at: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Reads the next token where a term or a combinator is expected.
    fn term_token(&mut self) -> Result<Token, FilterError> {
        self.skip_whitespace();
        let pos = self.at + 1;
        let tok = match self.peek() {
            None => Tok::End,
            Some('-') => {
                self.at += 1;
                Tok::Minus
            }
            Some(quote @ ('"' | '\'')) => Tok::Str(self.string(quote)?),
            Some(c) if is_symbol(c) => self.symbol()?,
            Some(_) => Tok::Word(self.word(|c| is_symbol(c) || c == '"' || c == '\'')),
        };
        Ok(Token { tok, pos })
    }

    /// Reads the next token where a value is expected. A bare value may hold `:`,
    /// `-`, `+`, `.`, `/` and `*`, as timestamps, negative numbers, names and
    /// wildcards need.
    fn value_token(&mut self) -> Result<Token, FilterError> {
        self.skip_whitespace();
        let pos = self.at + 1;
        let tok = match self.peek() {
            None => Tok::End,
            Some(quote @ ('"' | '\'')) => Tok::Str(self.string(quote)?),
            Some(c) if is_symbol(c) && c != ':' => self.symbol()?,
            Some(_) => {
                Tok::Word(self.word(|c| (is_symbol(c) && c != ':') || c == '"' || c == '\''))
            }
        };
        Ok(Token { tok, pos })
    }

    /// Reads a bare word, up to whitespace or a character for which `stop` holds.
    fn word(&mut self, stop: impl Fn(char) -> bool) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || stop(c) {
                break;
            }
            word.push(c);
            self.at += 1;
        }
        word
    }

    /// Reads a parenthesis or an operator.
    fn symbol(&mut self) -> Result<Tok, FilterError> {
        let pos = self.at + 1;
        let first = self.peek();
        self.at += 1;
        let followed_by_eq = self.peek() == Some('=');
        let tok = match first {
            Some('(') => Tok::LParen,
            Some(')') => Tok::RParen,
            Some('=') => Tok::Op(Op::Eq),
            Some(':') => Tok::Op(Op::Has),
            Some('<') if followed_by_eq => Tok::Op(Op::Le),
            Some('<') => Tok::Op(Op::Lt),
            Some('>') if followed_by_eq => Tok::Op(Op::Ge),
            Some('>') => Tok::Op(Op::Gt),
            Some('!') if followed_by_eq => Tok::Op(Op::Ne),
            Some('!') => {
                return Err(FilterError::new(
                    pos,
                    "unexpected \"!\"; use \"!=\" for not-equal, or NOT or \"-\" to negate",
                ))
            }
            _ => {
                return Err(FilterError::new(pos, "unexpected character"));
            }
        };
        if matches!(tok, Tok::Op(Op::Le | Op::Ge | Op::Ne)) {
            self.at += 1;
        }
        Ok(tok)
    }

    /// Reads a string quoted with `quote`, resolving the escapes `\"`, `\'` and `\\`.
    fn string(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.at + 1;
        self.at += 1;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(FilterError::new(
                    start,
                    format!("unterminated string; close it with {quote}"),
                ));
            };
            self.at += 1;
            if c == quote {
                return Ok(text);
            }
            if c != '\\' {
                text.push(c);
                continue;
            }
            match self.peek() {
                Some(escaped @ ('"' | '\'' | '\\')) => {
                    text.push(escaped);
                    self.at += 1;
                }
                Some(other) => {
                    return Err(FilterError::new(
                        self.at,
                        format!(
                            "invalid escape \"\\{other}\" in string; only \\\", \\' and \\\\ \
                             are allowed"
                        ),
                    ))
                }
                None => {
                    return Err(FilterError::new(
                        start,
                        format!("unterminated string; close it with {quote}"),
                    ))
                }
            }
        }
    }
}

/// Whether `c` is a parenthesis or starts an operator.
fn is_symbol(c: char) -> bool {
    matches!(c, '(' | ')' | '=' | '!' | '<' | '>' | ':')
}

/// A value as written in the filter.
struct Value {
    text: String,
    pos: usize,
}

impl Value {
    fn is_star(&self) -> bool {
        self.text == "*"
    }

    fn quoted(&self) -> String {
        format!("\"{}\"", escape(&self.text))
    }
}

/// A recursive-descent parser for the AIP-160 grammar:
///
/// ```text
/// expression  = sequence { "AND" sequence }
/// sequence    = factor { factor }
/// factor      = term { "OR" term }
/// term        = [ "NOT" | "-" ] simple
/// simple      = restriction | "(" expression ")"
/// restriction = field operator value
/// ```
struct Parser {
    lexer: Lexer,
    /// How many parentheses are open.
    depth: usize,
    /// The last token read, as it reads in an error message.
    last: String,
}

impl Parser {
    fn next_term(&mut self) -> Result<Token, FilterError> {
        let token = self.lexer.term_token()?;
        self.last = token.tok.describe();
        Ok(token)
    }

    fn peek_term(&mut self) -> Result<Tok, FilterError> {
        let at = self.lexer.at;
        let token = self.lexer.term_token();
        self.lexer.at = at;
        Ok(token?.tok)
    }

    fn expression(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.sequence()?];
        while self.peek_term()?.is_keyword("AND") {
            self.next_term()?;
            parts.push(self.sequence()?);
        }
        Ok(Expr::all(parts))
    }

    fn sequence(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.factor()?];
        loop {
            let next = self.peek_term()?;
            if matches!(next, Tok::End | Tok::RParen) || next.is_keyword("AND") {
                break;
            }
            parts.push(self.factor()?);
        }
        Ok(Expr::all(parts))
    }

    fn factor(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.term()?];
        while self.peek_term()?.is_keyword("OR") {
            self.next_term()?;
            parts.push(self.term()?);
        }
        Ok(Expr::any(parts))
    }

    fn term(&mut self) -> Result<Expr, FilterError> {
        let next = self.peek_term()?;
        if next == Tok::Minus || next.is_keyword("NOT") {
            self.next_term()?;
            let negated = self.simple()?;
            return Ok(Expr::Not(Box::new(negated)));
        }
        self.simple()
    }

    fn simple(&mut self) -> Result<Expr, FilterError> {
        let after = std::mem::take(&mut self.last);
        let token = self.next_term()?;
        match token.tok {
            Tok::LParen => {
                if self.depth >= MAX_DEPTH {
                    return Err(FilterError::new(
                        token.pos,
                        format!(
                            "parentheses are nested too deeply; at most {MAX_DEPTH} levels \
                             are allowed"
                        ),
                    ));
                }
                self.depth += 1;
                let inner = self.expression()?;
                self.depth -= 1;
                let close = self.next_term()?;
                match close.tok {
                    Tok::RParen => Ok(inner),
                    Tok::End => Err(FilterError::new(
                        close.pos,
                        format!(
                            "missing \")\" to close the \"(\" at character {}",
                            token.pos
                        ),
                    )),
                    other => Err(FilterError::new(
                        close.pos,
                        format!("unexpected {}; expected \")\"", other.describe()),
                    )),
                }
            }
            Tok::Word(word) if !matches!(word.as_str(), "AND" | "OR" | "NOT") => {
                self.restriction(word, token.pos)
            }
            Tok::RParen => Err(FilterError::new(token.pos, "unexpected \")\"")),
            Tok::End if after.is_empty() => Err(FilterError::new(
                token.pos,
                "expected a comparison such as kind=\"sleep\"",
            )),
            Tok::End => Err(FilterError::new(
                token.pos,
                format!("expected a comparison after {after}"),
            )),
            Tok::Str(_) => Err(FilterError::new(
                token.pos,
                format!(
                    "unexpected {}; a comparison starts with a field name, e.g. kind=\"sleep\"",
                    token.tok.describe()
                ),
            )),
            other => Err(FilterError::new(
                token.pos,
                format!(
                    "unexpected {}; expected a comparison such as kind=\"sleep\"",
                    other.describe()
                ),
            )),
        }
    }

    fn restriction(&mut self, word: String, pos: usize) -> Result<Expr, FilterError> {
        let Some(field) = Field::resolve(&word) else {
            let mut message = format!(
                "unknown field \"{}\"; filterable fields are: {FIELD_LIST}",
                escape(&word)
            );
            if ["and", "or", "not"].contains(&word.to_ascii_lowercase().as_str()) {
                message.push_str("; the keywords AND, OR and NOT must be upper-case");
            }
            return Err(FilterError::new(pos, message));
        };
        let op_token = self.next_term()?;
        let op = match op_token.tok {
            Tok::Op(op) => op,
            other => {
                return Err(FilterError::new(
                    op_token.pos,
                    format!(
                        "expected an operator such as = or : after \"{word}\", found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let value_token = self.lexer.value_token()?;
        let missing = || format!("expected a value after \"{}\"", op.symbol());
        let value = match value_token.tok {
            Tok::Word(text) if matches!(text.as_str(), "AND" | "OR" | "NOT") => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!(
                        "{}, found the keyword {text}; quote it to compare with the word",
                        missing()
                    ),
                ))
            }
            Tok::Word(text) | Tok::Str(text) => Value {
                text,
                pos: value_token.pos,
            },
            Tok::LParen => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!(
                        "{}; lists of values are not supported, write \
                         (kind=\"a\" OR kind=\"b\") instead",
                        missing()
                    ),
                ))
            }
            Tok::End => return Err(FilterError::new(value_token.pos, missing())),
            other => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!("{}, found {}", missing(), other.describe()),
                ))
            }
        };
        self.last = value.quoted();
        let test = typed_test(field, op, op_token.pos, &value)?;
        Ok(Expr::Test(test))
    }
}

/// Checks `op` and `value` against the type of `field` and builds the test.
fn typed_test(field: Field, op: Op, op_pos: usize, value: &Value) -> Result<Test, FilterError> {
    let operator_error = || {
        FilterError::new(
            op_pos,
            format!("\"{}\" does not apply to {}", op.symbol(), field.describe()),
        )
    };
    if op == Op::Has && value.is_star() {
        return Ok(match field {
            Field::ErrorCode | Field::Error => Test::HasError,
            _ => Test::Always,
        });
    }
    let negate = op == Op::Ne;
    match field {
        Field::Name | Field::Kind | Field::Schedule if !op.is_equality() => Err(operator_error()),
        Field::Schedule => {
            // A bare id means the schedule of that id; the empty value, no schedule.
            let mut pattern = Pattern::new(&value.text);
            if !pattern.any_prefix
                && !pattern.text.is_empty()
                && !pattern.text.starts_with(SCHEDULE_PREFIX)
            {
                pattern.text.insert_str(0, SCHEDULE_PREFIX);
            }
            Ok(Test::Schedule { negate, pattern })
        }
        Field::Name => {
            let pattern = Pattern::new(&value.text);
            Ok(Test::Name {
                negate,
                bare: !pattern.text.starts_with(NAME_PREFIX),
                pattern,
            })
        }
        Field::Kind => Ok(Test::Kind {
            negate,
            pattern: Pattern::new(&value.text),
        }),
        Field::Done if !op.is_equality() => Err(operator_error()),
        Field::Done => {
            let wanted = match value.text.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(FilterError::new(
                        value.pos,
                        format!(
                            "invalid boolean {}: done accepts true or false",
                            value.quoted()
                        ),
                    ))
                }
            };
            Ok(Test::Done {
                negate,
                value: wanted,
            })
        }
        Field::State if !op.is_equality() => Err(operator_error()),
        Field::State => match STATES.iter().find(|state| **state == value.text) {
            Some(state) => Ok(Test::State {
                negate,
                value: state,
            }),
            None => Err(FilterError::new(
                value.pos,
                format!(
                    "invalid state {}: state accepts {}",
                    value.quoted(),
                    STATES.join(", ")
                ),
            )),
        },
        Field::ErrorCode => Ok(Test::ErrorCode {
            op,
            value: error_code(value)?,
        }),
        Field::Error => Err(FilterError::new(
            op_pos,
            "error supports only the presence test error:*; to compare codes use error.code",
        )),
        Field::CreateTime => Ok(Test::CreateTime {
            op,
            value: timestamp(value)?,
        }),
        Field::UpdateTime => Ok(Test::UpdateTime {
            op,
            value: timestamp(value)?,
        }),
        Field::Priority => match value.text.parse::<i32>() {
            Ok(n) => Ok(Test::Priority { op, value: n }),
            Err(_) => Err(FilterError::new(
                value.pos,
                format!(
                    "invalid priority {}: priority accepts an integer such as 10 or -5",
                    value.quoted()
                ),
            )),
        },
    }
}

/// Reads a `google.rpc.Code` given as a number or a name.
fn error_code(value: &Value) -> Result<i32, FilterError> {
    if let Ok(number) = value.text.parse::<i32>() {
        if (0..=16).contains(&number) {
            return Ok(number);
        }
    } else if let Some(index) = CODE_NAMES.iter().position(|name| *name == value.text) {
        if let Ok(number) = i32::try_from(index) {
            return Ok(number);
        }
    }
    Err(FilterError::new(
        value.pos,
        format!(
            "invalid error code {}: error.code accepts a number from 0 to 16 or a \
             google.rpc.Code name such as NOT_FOUND",
            value.quoted()
        ),
    ))
}

/// Reads an RFC 3339 timestamp.
fn timestamp(value: &Value) -> Result<SystemTime, FilterError> {
    let invalid = || {
        FilterError::new(
            value.pos,
            format!(
                "invalid timestamp {}: expected RFC 3339, e.g. \"2026-01-02T15:04:05Z\"",
                value.quoted()
            ),
        )
    };
    let parsed = prost_types::Timestamp::from_str(&value.text).map_err(|_| invalid())?;
    SystemTime::try_from(parsed).map_err(|_| {
        FilterError::new(
            value.pos,
            format!("timestamp {} is out of range", value.quoted()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn created_after_is_the_latest_lower_bound_every_match_meets() {
        let at = |s: &str| {
            SystemTime::try_from(
                <prost_types::Timestamp as std::str::FromStr>::from_str(s).unwrap(),
            )
            .unwrap()
        };
        let after = |f: &str| Filter::parse(f).unwrap().created_after();
        let (t1, t2) = ("2026-01-02T15:04:05Z", "2026-03-04T05:06:07Z");
        assert_eq!(after(&format!("create_time > \"{t1}\"")), Some(at(t1)));
        assert_eq!(
            after(&format!(
                "kind = sleep AND create_time >= \"{t2}\" AND create_time > \"{t1}\""
            )),
            Some(at(t2))
        );
        // Not a bound every match meets: an upper bound, an alternative, a negation.
        for f in [
            String::new(),
            "kind = sleep".to_owned(),
            format!("create_time < \"{t1}\""),
            format!("create_time > \"{t1}\" OR done = true"),
            format!("NOT create_time > \"{t1}\""),
        ] {
            assert_eq!(after(&f), None, "{f}");
        }
    }

    #[test]
    fn created_before_is_the_earliest_upper_bound_every_match_meets() {
        let at = |s: &str| {
            SystemTime::try_from(
                <prost_types::Timestamp as std::str::FromStr>::from_str(s).unwrap(),
            )
            .unwrap()
        };
        let before = |f: &str| Filter::parse(f).unwrap().created_before();
        let (t1, t2) = ("2026-01-02T15:04:05Z", "2026-03-04T05:06:07Z");
        let micros = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros();
        let bound = |f: &str| before(f).map(micros);
        assert_eq!(
            bound(&format!("create_time < \"{t1}\"")),
            Some(micros(at(t1)))
        );
        // Half a microsecond past a whole one: `c < ⌈T⌉` in the SQL, so the bound rounds up
        // (rounded down, a row created at that whole microsecond would be left out).
        let half = "2026-01-02T15:04:05.0000105Z";
        assert_eq!(
            bound(&format!("create_time < \"{half}\"")),
            Some(micros(at("2026-01-02T15:04:05.000011Z")))
        );
        assert_eq!(
            bound(&format!("create_time <= \"{half}\"")),
            Some(micros(at("2026-01-02T15:04:05.000011Z")))
        );
        assert_eq!(
            before(&format!("create_time <= \"{t1}\"")),
            Some(at(t1) + Duration::from_micros(1)),
            "inclusive: the next microsecond"
        );
        assert_eq!(
            bound(&format!(
                "kind = sleep AND create_time <= \"{t2}\" AND create_time < \"{t1}\""
            )),
            Some(micros(at(t1)))
        );
        for f in [
            String::new(),
            format!("create_time > \"{t1}\""),
            format!("create_time < \"{t1}\" OR done = true"),
            format!("NOT create_time < \"{t1}\""),
        ] {
            assert_eq!(before(&f), None, "{f}");
        }
    }

    /// 2026-01-02T15:04:05Z.
    const T0: u64 = 1_767_366_245;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn op() -> FilterFields<'static> {
        FilterFields {
            name: "operations/3f2a9c",
            done: false,
            kind: "sleep",
            state: "RUNNING",
            error_code: None,
            create_time: at(T0, 0),
            update_time: at(T0 + 60, 500_000_000),
            priority: 0,
            schedule: "",
        }
    }

    fn failed(code: i32) -> FilterFields<'static> {
        FilterFields {
            done: true,
            state: "FAILED",
            error_code: Some(code),
            ..op()
        }
    }

    fn parse(filter: &str) -> Filter {
        match Filter::parse(filter) {
            Ok(parsed) => parsed,
            Err(err) => panic!("{filter:?} should parse: {err}"),
        }
    }

    fn check(filter: &str, fields: &FilterFields<'_>) -> bool {
        parse(filter).matches(fields)
    }

    fn error(filter: &str) -> FilterError {
        match Filter::parse(filter) {
            Ok(parsed) => panic!("{filter:?} should not parse, got {parsed:?}"),
            Err(err) => err,
        }
    }

    /// Asserts that `filter` fails at `position` with a message containing `needle`.
    fn fails(filter: &str, position: usize, needle: &str) {
        let err = error(filter);
        assert_eq!(err.position, position, "{filter:?}: {err}");
        assert!(
            err.message.contains(needle),
            "{filter:?}: {:?} should contain {needle:?}",
            err.message
        );
    }

    #[test]
    fn empty_filter_matches_everything() {
        for filter in ["", "   ", "\t\n "] {
            let parsed = parse(filter);
            assert!(parsed.is_empty());
            assert!(parsed.matches(&op()));
            assert!(parsed.matches(&failed(5)));
        }
        assert!(!parse("done=false").is_empty());
    }

    #[test]
    fn name_equality_full_and_bare() {
        let o = op();
        assert!(check("name=\"operations/3f2a9c\"", &o));
        assert!(check("name=operations/3f2a9c", &o));
        assert!(check("name=3f2a9c", &o));
        assert!(check("name:3f2a9c", &o));
        assert!(!check("name=3f2a", &o));
        assert!(!check("name=operations/3f2a", &o));
        assert!(check("name!=3f2a", &o));
        assert!(!check("name!=operations/3f2a9c", &o));
        assert!(check("name:*", &o));
        assert!(!check("NOT name:*", &o));
    }

    #[test]
    fn name_wildcards() {
        let o = op();
        assert!(check("name=3f*", &o));
        assert!(check("name=\"operations/3f*\"", &o));
        assert!(check("name=*9c", &o));
        assert!(check("name=*2a9*", &o));
        assert!(check("name=*", &o));
        assert!(!check("name=9c*", &o));
        assert!(!check("name=*3f", &o));
        assert!(!check("name=*zz*", &o));
        // Bare patterns test the ID only, so "op" is not found in "operations/".
        assert!(!check("name=*op*", &o));
        assert!(check("name!=*zz*", &o));
        // An interior star is literal.
        assert!(!check("name=3f*9c", &o));
        assert!(check(
            "name=3f*9c",
            &FilterFields {
                name: "operations/3f*9c",
                ..o
            }
        ));
    }

    #[test]
    fn name_without_prefix_is_compared_whole() {
        let o = FilterFields {
            name: "legacy-id",
            ..op()
        };
        assert!(check("name=legacy-id", &o));
        assert!(!check("name=operations/legacy-id", &o));
    }

    #[test]
    fn kind_operators_and_quoting() {
        let o = op();
        assert!(check("kind=sleep", &o));
        assert!(check("kind = sleep", &o));
        assert!(check("kind:sleep", &o));
        assert!(check("kind=\"sleep\"", &o));
        assert!(check("kind='sleep'", &o));
        assert!(check("metadata.kind=sleep", &o));
        assert!(!check("kind=snooze", &o));
        assert!(check("kind!=snooze", &o));
        assert!(!check("kind!=sleep", &o));
        assert!(check("kind=sl*", &o));
        assert!(check("kind=*eep", &o));
        assert!(check("kind=*lee*", &o));
        assert!(check("kind:*", &o));
        let odd = FilterFields {
            kind: "a \"b\" 'c' \\d",
            ..o
        };
        assert!(check(r#"kind="a \"b\" 'c' \\d""#, &odd));
        assert!(check(r#"kind='a "b" \'c\' \\d'"#, &odd));
        let dashed = FilterFields {
            kind: "my-job.v2/x",
            ..o
        };
        assert!(check("kind=my-job.v2/x", &dashed));
    }

    #[test]
    fn done_operators() {
        let running = op();
        let finished = failed(2);
        assert!(check("done=false", &running));
        assert!(!check("done=true", &running));
        assert!(check("done=true", &finished));
        assert!(check("done!=true", &running));
        assert!(check("done:false", &running));
        assert!(check("done=\"true\"", &finished));
        assert!(check("done:*", &running));
    }

    #[test]
    fn state_operators() {
        for state in STATES {
            let o = FilterFields { state, ..op() };
            assert!(check(&format!("state={state}"), &o));
            assert!(check(&format!("metadata.state=\"{state}\""), &o));
            assert!(check(&format!("state:{state}"), &o));
            assert!(!check(&format!("state!={state}"), &o));
            for other in STATES.iter().filter(|other| **other != state) {
                assert!(!check(&format!("state={other}"), &o));
                assert!(check(&format!("state!={other}"), &o));
            }
        }
        assert!(check("state:*", &op()));
    }

    #[test]
    fn error_code_operators() {
        let f = failed(5);
        assert!(check("error.code=5", &f));
        assert!(check("error.code=NOT_FOUND", &f));
        assert!(check("error.code=\"NOT_FOUND\"", &f));
        assert!(check("error.code:5", &f));
        assert!(!check("error.code=4", &f));
        assert!(check("error.code!=4", &f));
        assert!(!check("error.code!=NOT_FOUND", &f));
        assert!(check("error.code<6", &f));
        assert!(!check("error.code<5", &f));
        assert!(check("error.code<=5", &f));
        assert!(!check("error.code<=4", &f));
        assert!(check("error.code>4", &f));
        assert!(!check("error.code>5", &f));
        assert!(check("error.code>=NOT_FOUND", &f));
        assert!(!check("error.code>=ALREADY_EXISTS", &f));
        assert!(check("error.code>=0", &failed(0)));
        assert!(check("error.code=OK", &failed(0)));
        assert!(check("error.code=16", &failed(16)));
        assert!(check("error.code=UNAUTHENTICATED", &failed(16)));
        assert!(check("error.code=CANCELLED", &failed(1)));
        for (number, name) in CODE_NAMES.iter().enumerate() {
            let f = failed(i32::try_from(number).unwrap());
            assert!(check(&format!("error.code={name}"), &f), "{name}");
            assert!(check(&format!("error.code={number}"), &f), "{number}");
        }
    }

    #[test]
    fn missing_error_semantics() {
        let o = op();
        for filter in [
            "error.code=0",
            "error.code=OK",
            "error.code<16",
            "error.code<=16",
            "error.code>0",
            "error.code>=0",
            "error.code:5",
            "error.code:*",
            "error:*",
        ] {
            assert!(!check(filter, &o), "{filter} should not match");
        }
        assert!(check("error.code!=5", &o));
        assert!(check("error.code!=OK", &o));
        assert!(check("NOT error:*", &o));
        assert!(check("-error.code:*", &o));
        assert!(check("error:*", &failed(0)));
        assert!(check("error.code:*", &failed(13)));
    }

    #[test]
    fn timestamps_quoted_and_bare() {
        let o = op(); // created at T0, updated at T0 + 60.5s
        assert!(check("create_time=\"2026-01-02T15:04:05Z\"", &o));
        assert!(check("create_time=2026-01-02T15:04:05Z", &o));
        assert!(check("create_time:2026-01-02T15:04:05Z", &o));
        assert!(check("metadata.create_time='2026-01-02T15:04:05Z'", &o));
        // Offsets.
        assert!(check("create_time=2026-01-02T16:04:05+01:00", &o));
        assert!(check("create_time=\"2026-01-02T10:04:05-05:00\"", &o));
        // Fractional seconds.
        assert!(check("update_time=2026-01-02T15:05:05.5Z", &o));
        assert!(check("update_time=2026-01-02T16:05:05.500+01:00", &o));
        assert!(check("update_time>2026-01-02T16:05:05.499999999+01:00", &o));
        assert!(!check("update_time>2026-01-02T15:05:05.5Z", &o));
        assert!(check("metadata.update_time>=2026-01-02T15:05:05.5Z", &o));
        assert!(check("update_time < 2026-01-02T15:05:05.500000001Z", &o));
        // All six operators on create_time.
        assert!(check("create_time<2026-01-02T15:04:06Z", &o));
        assert!(!check("create_time<2026-01-02T15:04:05Z", &o));
        assert!(check("create_time<=2026-01-02T15:04:05Z", &o));
        assert!(check("create_time>2026-01-02T15:04:04Z", &o));
        assert!(!check("create_time>2026-01-02T15:04:05Z", &o));
        assert!(check("create_time>=2026-01-02T15:04:05Z", &o));
        assert!(check("create_time!=2026-01-02T15:04:06Z", &o));
        assert!(!check("create_time!=2026-01-02T15:04:05Z", &o));
        assert!(check("create_time:*", &o));
        assert!(check("update_time:*", &o));
        // A date alone means its midnight UTC.
        assert!(check("create_time>2026-01-02", &o));
        assert!(check("create_time<2026-01-03", &o));
        // Before the epoch.
        assert!(check("create_time>1969-12-31T23:59:59Z", &o));
    }

    #[test]
    fn precedence_or_binds_tighter_than_and() {
        // done=true AND (kind="a" OR kind="b")
        let filter = "done=true AND kind=\"a\" OR kind=\"b\"";
        let running_b = FilterFields { kind: "b", ..op() };
        let done_a = FilterFields {
            kind: "a",
            ..failed(1)
        };
        let done_c = FilterFields {
            kind: "c",
            ..failed(1)
        };
        assert!(!check(filter, &running_b));
        assert!(check(filter, &done_a));
        assert!(!check(filter, &done_c));
        // Parentheses override: (done=true AND kind="a") OR kind="b".
        let grouped = "(done=true AND kind=\"a\") OR kind=\"b\"";
        assert!(check(grouped, &running_b));
        assert!(check(grouped, &done_a));
        assert!(!check(grouped, &done_c));
        assert_eq!(parse(filter), parse("done=true AND (kind=a OR kind=b)"));
        assert_ne!(parse(filter), parse(grouped));
    }

    #[test]
    fn juxtaposition_means_and() {
        let o = op();
        assert!(check("kind=sleep done=false", &o));
        assert!(!check("kind=sleep done=true", &o));
        assert!(check("kind=sleep state=RUNNING done=false", &o));
        // a b OR c = a AND (b OR c)
        assert!(check("kind=sleep done=true OR state=RUNNING", &o));
        assert!(!check("kind=nap done=false OR state=RUNNING", &o));
        assert_eq!(
            parse("kind=sleep done=false"),
            parse("kind=sleep AND done=false")
        );
        assert_eq!(
            parse("kind=sleep(done=false)"),
            parse("kind=sleep AND done=false")
        );
    }

    #[test]
    fn negation() {
        let o = op();
        assert!(check("NOT done=true", &o));
        assert!(!check("NOT done=false", &o));
        assert!(check("-done=true", &o));
        assert!(!check("-kind=sleep", &o));
        assert!(check("NOT (kind=a OR kind=b)", &o));
        assert!(!check("NOT(kind=sleep OR kind=b)", &o));
        assert!(check("-(kind=a OR kind=b)", &o));
        // Negation binds tighter than OR and AND.
        assert!(check("NOT kind=sleep OR done=false", &o));
        assert!(!check("NOT kind=sleep AND done=false", &o));
        assert!(check("kind=sleep -done=true", &o));
        assert!(check("kind=sleep AND NOT state=FAILED", &o));
    }

    #[test]
    fn parentheses_nest() {
        let o = op();
        assert!(check("((kind=sleep))", &o));
        assert!(check(
            "(kind=a OR (kind=sleep AND done=false)) state=RUNNING",
            &o
        ));
        assert!(!check(
            "(kind=a OR (kind=sleep AND done=true)) state=RUNNING",
            &o
        ));
        assert!(check("( kind = sleep )", &o));
        let deep = format!("{}kind=sleep{}", "(".repeat(32), ")".repeat(32));
        assert!(check(&deep, &o));
    }

    #[test]
    fn parsed_filters_compare_by_structure() {
        assert_eq!(parse("kind=sleep"), parse("  kind : 'sleep' ").clone());
        assert_eq!(parse("state=RUNNING"), parse("metadata.state=RUNNING"));
        assert_ne!(parse("kind=sleep"), parse("kind!=sleep"));
    }

    #[test]
    fn error_display_names_position() {
        let err = error("foo=1");
        assert_eq!(
            err.to_string(),
            "invalid filter at character 1: unknown field \"foo\"; filterable fields are: \
             name, done, kind, state, error.code, create_time, update_time, priority, schedule"
        );
    }

    #[test]
    fn unknown_fields() {
        fails(
            "foo=1",
            1,
            "unknown field \"foo\"; filterable fields are: \
             name, done, kind, state, error.code, create_time, update_time, priority, schedule",
        );
        fails(
            "done=true AND metadata.name=x",
            15,
            "unknown field \"metadata.name\"",
        );
        fails("kind=a and kind=b", 8, "must be upper-case");
        fails("kind=a Or kind=b", 8, "unknown field \"Or\"");
    }

    #[test]
    fn missing_operator_or_value() {
        fails(
            "kind",
            5,
            "expected an operator such as = or : after \"kind\"",
        );
        fails("kind sleep", 6, "expected an operator");
        fails("kind=", 6, "expected a value after \"=\"");
        fails("kind = ", 8, "expected a value after \"=\"");
        fails("kind:", 6, "expected a value after \":\"");
        fails("kind=)", 6, "expected a value after \"=\"");
        fails("(kind=)", 7, "expected a value after \"=\"");
        fails("kind= AND done=true", 7, "found the keyword AND");
        fails("kind==sleep", 6, "expected a value after \"=\"");
        fails("kind=(a OR b)", 6, "lists of values are not supported");
    }

    #[test]
    fn operator_type_mismatches() {
        fails("done<true", 5, "\"<\" does not apply to boolean field done");
        fails(
            "done >= false",
            6,
            "\">=\" does not apply to boolean field done",
        );
        fails(
            "state>RUNNING",
            6,
            "\">\" does not apply to enum field state",
        );
        fails("name<=x", 5, "\"<=\" does not apply to string field name");
        fails("kind>x", 5, "\">\" does not apply to string field kind");
        fails(
            "error=5",
            6,
            "error supports only the presence test error:*",
        );
        fails("error:5", 6, "to compare codes use error.code");
    }

    #[test]
    fn invalid_values() {
        fails("done=yes", 6, "done accepts true or false");
        fails("done=TRUE", 6, "invalid boolean \"TRUE\"");
        fails(
            "state=queued",
            7,
            "state accepts QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED",
        );
        fails("state=\"PAUSED\"", 7, "invalid state \"PAUSED\"");
        fails(
            "error.code=17",
            12,
            "error.code accepts a number from 0 to 16",
        );
        fails("error.code > -1", 14, "invalid error code \"-1\"");
        fails("error.code=not_found", 12, "google.rpc.Code name");
        fails("error.code=*", 12, "invalid error code \"*\"");
        fails(
            "create_time>2026-13-01",
            13,
            "invalid timestamp \"2026-13-01\": expected RFC 3339, e.g. \"2026-01-02T15:04:05Z\"",
        );
        fails(
            "update_time='yesterday'",
            13,
            "invalid timestamp \"yesterday\"",
        );
        fails("create_time=2026-01-02T25:00:00Z", 13, "invalid timestamp");
    }

    #[test]
    fn structural_errors() {
        fails("kind=a)", 7, "unexpected \")\"");
        fails(")", 1, "unexpected \")\"");
        fails("()", 2, "unexpected \")\"");
        fails(
            "(kind=a",
            8,
            "missing \")\" to close the \"(\" at character 1",
        );
        fails("kind=a AND", 11, "expected a comparison after \"AND\"");
        fails("kind=a OR", 10, "expected a comparison after \"OR\"");
        fails("NOT", 4, "expected a comparison after \"NOT\"");
        fails("-", 2, "expected a comparison after \"-\"");
        fails("AND kind=a", 1, "unexpected \"AND\"");
        fails("kind=a OR AND kind=b", 11, "unexpected \"AND\"");
        fails("NOT NOT kind=a", 5, "unexpected \"NOT\"");
        fails("\"sleep\"", 1, "a comparison starts with a field name");
        fails("=sleep", 1, "unexpected \"=\"");
        fails("kind!sleep", 5, "use \"!=\" for not-equal");
        fails("kind=a b", 8, "unknown field \"b\"");
    }

    #[test]
    fn string_errors() {
        fails("kind=\"sleep", 6, "unterminated string");
        fails("kind='sleep", 6, "unterminated string; close it with '");
        fails("done=false kind=\"a\\", 17, "unterminated string");
        fails("kind=\"a\\nb\"", 8, "invalid escape \"\\n\"");
        fails("\"abc", 1, "unterminated string");
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        fails("kind=\"é\" foo=1", 10, "unknown field \"foo\"");
        fails("kind=日本 x", 9, "unknown field \"x\"");
        let o = FilterFields {
            kind: "日本",
            ..op()
        };
        assert!(check("kind=日本", &o));
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("kind={}", "a".repeat(MAX_FILTER_LEN - 5));
        assert_eq!(at_limit.len(), MAX_FILTER_LEN);
        assert!(!parse(&at_limit).is_empty());
        let over = format!("{at_limit}a");
        let err = error(&over);
        assert_eq!(err.position, MAX_FILTER_LEN + 1);
        assert!(err.message.contains("4096"), "{}", err.message);
        assert!(err.message.contains("4097 bytes"), "{}", err.message);
        // Multi-byte characters: the position counts characters.
        let wide = "é".repeat(3000);
        let err = error(&wide);
        assert_eq!(err.position, MAX_FILTER_LEN / 2 + 1);
        assert_eq!(MAX_FILTER_LEN, 4096);
    }

    #[test]
    fn nesting_limit() {
        let too_deep = format!("{}kind=sleep{}", "(".repeat(33), ")".repeat(33));
        fails(&too_deep, 33, "at most 32 levels");
        let negated = format!("{}kind=sleep{}", "NOT (".repeat(33), ")".repeat(33));
        fails(&negated, 5 * 32 + 5, "nested too deeply");
        // Far deeper than the limit must fail cleanly, not overflow the stack.
        let huge = "(".repeat(MAX_FILTER_LEN);
        fails(&huge, 33, "nested too deeply");
        let minus = "-(".repeat(MAX_FILTER_LEN / 2);
        fails(&minus, 66, "nested too deeply");
    }

    /// A small deterministic pseudo-random generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parses `input` and, when it parses, evaluates it; the error, if any, must
    /// point inside the input or just past it.
    fn survive(input: &str) -> bool {
        match Filter::parse(input) {
            Ok(filter) => {
                let _ = filter.matches(&op());
                let _ = filter.matches(&failed(3));
                true
            }
            Err(err) => {
                assert!(
                    err.position >= 1 && err.position <= input.chars().count() + 1,
                    "{input:?}: position {} out of range",
                    err.position
                );
                assert!(!err.message.is_empty());
                false
            }
        }
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        // `survive` is the check: no panic, and every refusal points inside the input.
        for _ in 0..3000 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            survive(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn fuzz_filter_alphabet_never_panics() {
        const PIECES: [&str; 30] = [
            "(",
            ")",
            "-",
            "NOT ",
            " AND ",
            " OR ",
            "=",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            ":",
            "*",
            "\"",
            "'",
            "\\",
            " ",
            "kind",
            "name",
            "done",
            "state",
            "error.code",
            "error",
            "create_time",
            "true",
            "RUNNING",
            "5",
            "NOT_FOUND",
            "2026-01-02T15:04:05Z",
        ];
        let mut rng = XorShift(42);
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..4000 {
            let count = rng.below(12);
            let input: String = (0..count)
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect();
            if survive(&input) {
                ok += 1;
            } else {
                bad += 1;
            }
        }
        assert!(ok > 0 && bad > 0, "ok={ok} bad={bad}");
    }

    #[test]
    fn fuzz_timestamps_never_panic() {
        const CHARS: &[u8] = b"0123456789-+:.TtZz ";
        let mut rng = XorShift(7);
        for _ in 0..3000 {
            let len = 8 + rng.below(30);
            let text: String = (0..len)
                .map(|_| char::from(CHARS[rng.below(CHARS.len())]))
                .collect();
            survive(&format!("create_time>=\"{text}\""));
            survive(&format!("update_time<{}", text.replace(' ', "")));
        }
        for extreme in [
            "+99999999999999999999-01-01T00:00:00Z",
            "-9999999999999999999-01-01T00:00:00Z",
            "+292277026597-12-04T15:30:07Z",
            "-292277022657-01-27T08:29:52Z",
            "9999-12-31T23:59:60.999999999-23:59",
            "0000-01-01T00:00:00+23:59",
        ] {
            survive(&format!("create_time>\"{extreme}\""));
        }
    }

    #[test]
    fn every_prefix_of_valid_filters_is_handled() {
        let valid = [
            "done=true AND kind=\"a\" OR kind=\"b\"",
            "NOT (state=FAILED OR error.code>=NOT_FOUND) -name=*abc*",
            "create_time>\"2026-01-02T15:04:05Z\" update_time<=2026-01-02T15:04:05.5+01:00",
            "metadata.kind:'sl\\'eep' error:* (name=operations/日本* OR done!=false)",
        ];
        for filter in valid {
            assert!(survive(filter), "{filter:?} should parse");
            for (end, _) in filter.char_indices() {
                let prefix = &filter[..end];
                let parsed = survive(prefix);
                // A prefix cut right after an operator or an opening parenthesis lacks its
                // value or its group: it must be refused, not read as something else.
                if prefix.trim_end().ends_with(['=', '<', '>', ':', '(']) {
                    assert!(!parsed, "{prefix:?} should be refused");
                }
            }
        }
    }
}
