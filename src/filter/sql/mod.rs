//! Filters compiled to SQL, so that a database answers them from its indexes.
//!
//! [`Filter::to_sqlite`] turns a parsed filter into a [`SqlFilter`]: a boolean expression
//! over the columns named by [`SqlColumns`], with every value the user wrote bound as a
//! parameter ([`SqlValue`]) rather than written into the SQL text. The expression means
//! exactly what [`Filter::matches`] means for the operation the row describes:
//!
//! * Every part of it is 0 or 1, never NULL, so SQL's three-valued logic cannot make `NOT`
//!   or `OR` disagree with Rust's: a missing error code (NULL) is tested with `IS`,
//!   `IS NOT` or an explicit `IS NOT NULL` guard.
//! * String patterns never use `LIKE` or `GLOB` (case-insensitive, or with wildcards of their
//!   own): an exact value is compared with `=`, a `*` pattern with byte-wise `substr` and
//!   `instr` on the column cast to a BLOB (after a length test, as both answer NULL for an
//!   empty BLOB), so `%`, `_`, `?`, `[`, NUL and case mean nothing special.
//! * Times are compared as [`Filter::matches`] compares the microsecond instant the column
//!   holds with the filter's nanosecond instant: the bound is rounded to the microsecond in
//!   the direction that keeps the comparison's answer.
//! * `AND` and `OR` are written as balanced trees, so the expression stays shallow (SQLite
//!   limits an expression's depth) however many terms the filter joins.
//!
//! Two dialects: SQLite's ([`Filter::to_sqlite`]: anonymous `?` placeholders, `1`/`0`, `instr`
//! and `substr` on BLOBs, `IS`) and PostgreSQL's ([`Filter::to_postgres`]: numbered `$n`
//! placeholders with their type cast, `TRUE`/`FALSE`, `position` and `substring` on the
//! column's UTF-8 bytes (`convert_to`), `IS DISTINCT FROM`). Both mean the same.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{Expr, Filter, Op, Pattern, Test, NAME_PREFIX};
use crate::proto::oprun::v1::operation_metadata;

/// The columns a filter is compiled over, and what each must hold. The names are written into
/// the SQL as they are, so they come from code, never from a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlColumns {
    /// The operation's bare id (TEXT, not NULL): its resource name without `operations/`.
    pub id: &'static str,
    /// The kind (TEXT, not NULL).
    pub kind: &'static str,
    /// Whether the operation has finished (INTEGER, not NULL): 1 or 0.
    pub done: &'static str,
    /// The `oprun.v1.OperationMetadata.State` enum number (INTEGER, not NULL).
    pub state: &'static str,
    /// The `google.rpc.Code` number of the operation's error (INTEGER), NULL when the
    /// operation has no error.
    pub error_code: &'static str,
    /// When the operation was created, in microseconds since the Unix epoch (INTEGER, not
    /// NULL).
    pub create_time: &'static str,
    /// When the operation last changed, in microseconds since the Unix epoch (INTEGER, not
    /// NULL).
    pub update_time: &'static str,
    /// The priority it was submitted with (INTEGER, not NULL).
    pub priority: &'static str,
    /// The schedule that started it (TEXT), NULL when none did.
    pub schedule: &'static str,
}

/// A value bound to one placeholder of a [`SqlFilter`]; each store binds it as its driver
/// takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqlValue {
    /// An integer: a state or error code number, a time in microseconds, 0 or 1 for `done`.
    Integer(i64),
    /// Text compared for equality with a TEXT column.
    Text(String),
    /// The UTF-8 bytes of a pattern, compared with a TEXT column cast to a BLOB.
    Blob(Vec<u8>),
}

/// A filter as a SQL boolean expression, from [`Filter::to_sqlite`] or [`Filter::to_postgres`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFilter {
    /// The expression: false or true for every row, never NULL; true for the empty filter. It
    /// holds one placeholder per entry of `params`, in order, and none of the user's text. Put
    /// it in parentheses when joining it with other conditions.
    pub clause: String,
    /// The values of the placeholders, in the order they appear in `clause`.
    pub params: Vec<SqlValue>,
}

impl Filter {
    /// The filter as a SQLite `WHERE` condition over `columns`: it holds for a row exactly
    /// when [`Filter::matches`] holds for the operation the row describes (with its times as
    /// the columns hold them, to the microsecond).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn to_sqlite(&self, columns: &SqlColumns) -> SqlFilter {
        self.to_sql(columns, Dialect::Sqlite)
    }

    /// The filter as a PostgreSQL `WHERE` condition over `columns`, with the same meaning as
    /// [`Filter::to_sqlite`]'s. Its placeholders are numbered from `$first` (so the query can
    /// bind its own parameters before them), each cast to its type.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn to_postgres(&self, columns: &SqlColumns, first: usize) -> SqlFilter {
        self.to_sql(columns, Dialect::Postgres { next: first })
    }

    fn to_sql(&self, columns: &SqlColumns, dialect: Dialect) -> SqlFilter {
        let mut builder = Builder {
            columns,
            dialect,
            clause: String::new(),
            params: Vec::new(),
        };
        match &self.expr {
            None => builder.constant(true),
            Some(expr) => builder.expr(expr),
        }
        SqlFilter {
            clause: builder.clause,
            params: builder.params,
        }
    }
}

/// The SQL a [`Builder`] writes (a build with one SQL backend writes one of them).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]
enum Dialect {
    Sqlite,
    /// `next` is the number of the next placeholder.
    Postgres {
        next: usize,
    },
}

/// Writes the SQL of an expression, collecting its parameters.
struct Builder<'c> {
    columns: &'c SqlColumns,
    dialect: Dialect,
    clause: String,
    params: Vec<SqlValue>,
}

impl Builder<'_> {
    /// Writes `expr`: a constant, a parenthesized expression, or `NOT` followed by one.
    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::And(parts) => self.join(parts, " AND ", true),
            Expr::Or(parts) => self.join(parts, " OR ", false),
            Expr::Not(inner) => {
                self.clause.push_str("NOT ");
                self.expr(inner);
            }
            Expr::Test(test) => self.test(test),
        }
    }

    /// Joins `parts` with `joint` as a balanced tree (its depth grows with the logarithm of
    /// the number of parts); no parts at all is `empty`.
    fn join(&mut self, parts: &[Expr], joint: &str, empty: bool) {
        match parts {
            [] => self.constant(empty),
            [only] => self.expr(only),
            _ => {
                let (left, right) = parts.split_at(parts.len() / 2);
                self.clause.push('(');
                self.join(left, joint, empty);
                self.clause.push_str(joint);
                self.join(right, joint, empty);
                self.clause.push(')');
            }
        }
    }

    /// Appends a placeholder bound to `value`.
    fn bind(&mut self, value: SqlValue) {
        match &mut self.dialect {
            Dialect::Sqlite => self.clause.push('?'),
            Dialect::Postgres { next } => {
                let cast = match value {
                    SqlValue::Integer(_) => "bigint",
                    SqlValue::Text(_) => "text",
                    SqlValue::Blob(_) => "bytea",
                };
                let _ = write!(self.clause, "${next}::{cast}");
                *next += 1;
            }
        }
        self.params.push(value);
    }

    /// Appends `(column OPERATOR ?)` with `value` bound.
    fn compare(&mut self, column: &str, operator: &str, value: SqlValue) {
        if let (Dialect::Postgres { .. }, SqlValue::Text(text)) = (self.dialect, &value) {
            if text.contains('\0') {
                // PostgreSQL's text holds no NUL (it refuses one as a parameter), so no stored
                // value equals this one: only `=` reaches here with text.
                self.constant(false);
                return;
            }
        }
        let _ = write!(self.clause, "({column} {operator} ");
        self.bind(value);
        self.clause.push(')');
    }

    fn test(&mut self, test: &Test) {
        let columns = self.columns;
        match test {
            Test::Always => self.constant(true),
            Test::Name {
                negate,
                bare,
                pattern,
            } => {
                if *negate {
                    self.clause.push_str("NOT ");
                }
                self.name(*bare, pattern);
            }
            Test::Kind { negate, pattern } => {
                if *negate {
                    self.clause.push_str("NOT ");
                }
                self.pattern(columns.kind, pattern);
            }
            Test::Schedule { negate, pattern } => {
                if *negate {
                    self.clause.push_str("NOT ");
                }
                self.schedule(pattern);
            }
            // `done` and `state` are written as numbers, not bound: they are the conditions of
            // the store's partial indexes (unfinished operations, final states), which SQLite
            // uses only when the query names the same condition literally; and a statement
            // with a bound equality and an ORDER BY is prepared again at every binding. They
            // come from the enum, never from the client's text.
            Test::Done { negate, value } => {
                let wanted = *value != *negate;
                let _ = write!(self.clause, "({} = {})", columns.done, u8::from(wanted));
            }
            Test::State { negate, value } => {
                let state = operation_metadata::State::from_str_name(value)
                    .expect("every state a filter accepts is an enum value name");
                let number = state as i32;
                if *negate {
                    let _ = write!(self.clause, "({} != {number})", columns.state);
                } else {
                    // A state is done or not: saying which lets the index of either side serve.
                    let done = u8::from(matches!(
                        state,
                        operation_metadata::State::Succeeded
                            | operation_metadata::State::Failed
                            | operation_metadata::State::Cancelled
                    ));
                    let _ = write!(
                        self.clause,
                        "({} = {done} AND {} = {number})",
                        columns.done, columns.state
                    );
                }
            }
            Test::ErrorCode { op, value } => self.error_code(*op, *value),
            Test::HasError => {
                let _ = write!(self.clause, "({} IS NOT NULL)", columns.error_code);
            }
            Test::CreateTime { op, value } => self.time(columns.create_time, *op, *value),
            Test::UpdateTime { op, value } => self.time(columns.update_time, *op, *value),
            Test::Priority { op, value } => {
                self.compare(
                    columns.priority,
                    sql_op(*op),
                    SqlValue::Integer(i64::from(*value)),
                );
            }
        }
    }

    /// `name` matching `pattern`. The column holds the bare id and every name is
    /// `operations/{id}`, so a pattern anchored at the start of the full name is the same
    /// pattern, less the prefix, on the id (and can use the id's index); only a full-name
    /// pattern with a leading `*` needs the name spelt out.
    fn name(&mut self, bare: bool, pattern: &Pattern) {
        let id = self.columns.id;
        if bare {
            self.pattern(id, pattern);
            return;
        }
        if !pattern.any_prefix {
            let on_id = Pattern {
                text: pattern.text[NAME_PREFIX.len()..].to_owned(),
                any_prefix: false,
                any_suffix: pattern.any_suffix,
            };
            self.pattern(id, &on_id);
            return;
        }
        // The prefix is a constant of the code (no quote in it), not the user's text.
        let full = format!("('{NAME_PREFIX}' || {id})");
        self.pattern(&full, pattern);
    }

    /// The schedule column (NULL for no schedule, which compares as the empty string)
    /// matching `pattern`: an exact name as an equality its index serves.
    fn schedule(&mut self, pattern: &Pattern) {
        let column = self.columns.schedule;
        if !pattern.any_prefix && !pattern.any_suffix && !pattern.text.is_empty() {
            // `NULL = ?` is NULL; the expression must never be.
            let _ = write!(self.clause, "({column} IS NOT NULL AND ");
            self.compare(column, "=", SqlValue::Text(pattern.text.clone()));
            self.clause.push(')');
            return;
        }
        // The column is a constant of the code, not the user's text.
        let subject = format!("COALESCE({column}, '')");
        self.pattern(&subject, pattern);
    }

    /// `subject` (a TEXT expression, never NULL) matching `pattern`, as [`Pattern::matches`]
    /// does: byte-wise, case-sensitive, with no wildcard but the pattern's own ends.
    fn pattern(&mut self, subject: &str, pattern: &Pattern) {
        let Pattern {
            text,
            any_prefix,
            any_suffix,
        } = pattern;
        if !any_prefix && !any_suffix {
            self.compare(subject, "=", SqlValue::Text(text.clone()));
            return;
        }
        if text.is_empty() {
            // Every string starts with, ends with and contains the empty string.
            self.constant(true);
            return;
        }
        let bytes = SqlValue::Blob(text.as_bytes().to_vec());
        let length = SqlValue::Integer(i64::try_from(text.len()).unwrap_or(i64::MAX));
        if let Dialect::Postgres { .. } = self.dialect {
            self.postgres_pattern(subject, *any_prefix, *any_suffix, bytes, length);
            return;
        }
        let blob = format!("CAST({subject} AS BLOB)");
        // SQLite's substr and instr answer NULL for an empty BLOB, so the length is tested
        // first: `0 AND NULL` is 0.
        let _ = write!(self.clause, "(length({blob}) >= ");
        self.bind(length.clone());
        match (any_prefix, any_suffix) {
            (false, true) => {
                let _ = write!(self.clause, " AND substr({blob}, 1, ");
                self.bind(length);
                self.clause.push_str(") = ");
            }
            (true, false) => {
                // substr(x, -n) is the last n bytes of x.
                let _ = write!(self.clause, " AND substr({blob}, -");
                self.bind(length);
                self.clause.push_str(") = ");
            }
            _ => {
                let _ = write!(self.clause, " AND instr({blob}, ");
                self.bind(bytes);
                self.clause.push_str(") > 0)");
                return;
            }
        }
        self.bind(bytes);
        self.clause.push(')');
    }

    /// [`Builder::pattern`] in PostgreSQL, on the subject's UTF-8 bytes (`bytea` compares byte
    /// by byte, whatever the database's collation). `substring` and `position` are defined for
    /// every length, the empty one included, so no guard is needed for NULLs; the length test
    /// stays for the suffix, whose start must not fall before the first byte.
    fn postgres_pattern(
        &mut self,
        subject: &str,
        any_prefix: bool,
        any_suffix: bool,
        bytes: SqlValue,
        length: SqlValue,
    ) {
        let utf8 = format!("convert_to({subject}, 'UTF8')");
        match (any_prefix, any_suffix) {
            // `substring` takes `integer` positions and lengths; the bound length is a
            // `bigint` (a pattern is far shorter than either's range).
            (false, true) => {
                let _ = write!(self.clause, "(substring({utf8} from 1 for ");
                self.bind(length);
                self.clause.push_str("::integer) = ");
            }
            (true, false) => {
                let _ = write!(self.clause, "(octet_length({utf8}) >= ");
                self.bind(length.clone());
                let _ = write!(
                    self.clause,
                    " AND substring({utf8} from octet_length({utf8}) + 1 - "
                );
                self.bind(length);
                self.clause.push_str("::integer) = ");
            }
            _ => {
                self.clause.push_str("(position(");
                self.bind(bytes);
                let _ = write!(self.clause, " in {utf8}) > 0)");
                return;
            }
        }
        self.bind(bytes);
        self.clause.push(')');
    }

    /// `error.code OP value`. Without an error (NULL) only `!=` holds.
    fn error_code(&mut self, op: Op, value: i32) {
        let column = self.columns.error_code;
        let value = SqlValue::Integer(i64::from(value));
        if op == Op::Ne {
            // NULL IS NOT n is 1, as an absent code differs from every code.
            let distinct = match self.dialect {
                Dialect::Sqlite => "IS NOT",
                Dialect::Postgres { .. } => "IS DISTINCT FROM",
            };
            self.compare(column, distinct, value);
            return;
        }
        // The guard makes a NULL code 0 rather than NULL, so NOT turns it into 1. `column OP ?`
        // stays a plain comparison, which lets SQLite use an index on the column.
        let _ = write!(
            self.clause,
            "({column} IS NOT NULL AND {column} {} ",
            sql_op(op)
        );
        self.bind(value);
        self.clause.push(')');
    }

    /// A time column (microseconds) compared with `value` (nanoseconds).
    fn time(&mut self, column: &str, op: Op, value: SystemTime) {
        let nanos = signed_nanos(value);
        let floor = nanos.div_euclid(1000);
        let whole = nanos.rem_euclid(1000) == 0;
        let ceil = if whole { floor } else { floor + 1 };
        // A column of microseconds c stands for the instant 1000·c ns, so
        // 1000·c < t ⇔ c < ⌈t/1000⌉, 1000·c ≤ t ⇔ c ≤ ⌊t/1000⌋, 1000·c > t ⇔ c > ⌊t/1000⌋,
        // 1000·c ≥ t ⇔ c ≥ ⌈t/1000⌉, and 1000·c = t needs t to be a whole microsecond.
        let bound = match op {
            Op::Eq | Op::Has | Op::Ne if !whole => return self.constant(op == Op::Ne),
            Op::Eq | Op::Has | Op::Ne | Op::Le | Op::Gt => floor,
            Op::Lt | Op::Ge => ceil,
        };
        match i64::try_from(bound) {
            Ok(bound) => self.compare(column, sql_op(op), SqlValue::Integer(bound)),
            // Beyond every value the column can hold, on one side.
            Err(_) => {
                let above = bound > 0;
                self.constant(match op {
                    Op::Lt | Op::Le => above,
                    Op::Gt | Op::Ge => !above,
                    Op::Eq | Op::Has => false,
                    Op::Ne => true,
                });
            }
        }
    }

    fn constant(&mut self, value: bool) {
        self.clause.push_str(match (self.dialect, value) {
            (Dialect::Sqlite, true) => "1",
            (Dialect::Sqlite, false) => "0",
            (Dialect::Postgres { .. }, true) => "TRUE",
            (Dialect::Postgres { .. }, false) => "FALSE",
        });
    }
}

/// The SQL spelling of a comparison; `:` (which reaches here only as equality) is `=`.
fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Eq | Op::Has => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

/// Nanoseconds since the Unix epoch, negative before it.
fn signed_nanos(t: SystemTime) -> i128 {
    let magnitude = |d: std::time::Duration| {
        i128::try_from(d.as_nanos()).expect("a Duration's nanoseconds fit in an i128")
    };
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => magnitude(after),
        Err(before) => -magnitude(before.duration()),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
