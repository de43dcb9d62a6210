//! The typed expression a filter parses into, and its evaluation against one operation.

use super::*;

/// A boolean combination of tests.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Test(Test),
}

impl Expr {
    pub(super) fn eval(&self, fields: &FilterFields<'_>) -> bool {
        match self {
            Expr::And(parts) => parts.iter().all(|part| part.eval(fields)),
            Expr::Or(parts) => parts.iter().any(|part| part.eval(fields)),
            Expr::Not(inner) => !inner.eval(fields),
            Expr::Test(test) => test.eval(fields),
        }
    }

    /// Joins `parts` with AND, flattening nested ANDs; a single part stands alone.
    pub(super) fn all(parts: Vec<Expr>) -> Expr {
        Self::join(parts, true)
    }

    /// Joins `parts` with OR, flattening nested ORs; a single part stands alone.
    pub(super) fn any(parts: Vec<Expr>) -> Expr {
        Self::join(parts, false)
    }

    pub(super) fn join(mut parts: Vec<Expr>, and: bool) -> Expr {
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
pub(super) enum Op {
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
    pub(super) fn symbol(self) -> &'static str {
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
    pub(super) fn compare<T: PartialOrd>(self, actual: &T, wanted: &T) -> bool {
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
    pub(super) fn is_equality(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Has)
    }
}

/// A string value with an optional `*` wildcard at its start and/or end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    pub(super) text: String,
    pub(super) any_prefix: bool,
    pub(super) any_suffix: bool,
}

impl Pattern {
    pub(super) fn new(value: &str) -> Pattern {
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

    pub(super) fn matches(&self, actual: &str) -> bool {
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
pub(super) enum Test {
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
    pub(super) fn eval(&self, fields: &FilterFields<'_>) -> bool {
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
pub(super) enum Field {
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
    pub(super) fn resolve(word: &str) -> Option<Field> {
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
    pub(super) fn describe(self) -> &'static str {
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
