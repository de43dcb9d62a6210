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
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rusqlite::{params, params_from_iter, Connection};

    use super::*;
    use crate::filter::{FilterFields, MAX_DEPTH, MAX_FILTER_LEN};
    use crate::store::from_micros;

    use crate::store::row::FILTER_COLUMNS as COLUMNS;

    /// 2026-01-02T15:04:05Z in microseconds.
    const T0: i64 = 1_767_366_245_000_000;

    #[test]
    fn both_dialects_bind_what_the_user_wrote() {
        let filter = Filter::parse("kind = sleep AND NOT error:*").unwrap();
        let sqlite = filter.to_sqlite(&COLUMNS);
        assert_eq!(
            sqlite.clause,
            "((kind = ?) AND NOT (error_code IS NOT NULL))"
        );
        assert_eq!(sqlite.params, [SqlValue::Text("sleep".into())]);
        let postgres = filter.to_postgres(&COLUMNS, 3);
        assert_eq!(
            postgres.clause,
            "((kind = $3::text) AND NOT (error_code IS NOT NULL))"
        );
        assert_eq!(postgres.params, [SqlValue::Text("sleep".into())]);
    }

    /// One operation as a row of the test table holds it.
    #[derive(Debug, Clone, Copy)]
    struct Row {
        id: &'static str,
        kind: &'static str,
        state: &'static str,
        error_code: Option<i32>,
        create_time: i64,
        update_time: i64,
        priority: i32,
        schedule: Option<&'static str>,
    }

    impl Row {
        fn done(&self) -> bool {
            matches!(self.state, "SUCCEEDED" | "FAILED" | "CANCELLED")
        }
    }

    const fn row(
        id: &'static str,
        kind: &'static str,
        state: &'static str,
        error_code: Option<i32>,
        create_time: i64,
    ) -> Row {
        Row {
            id,
            kind,
            state,
            error_code,
            create_time,
            update_time: create_time + 60_500_000,
            // -3 to 3, from the creation time: several rows share one.
            priority: create_time.rem_euclid(7) as i32 - 3,
            schedule: None,
        }
    }

    /// `r`, started by the schedule `name`.
    const fn scheduled(mut r: Row, name: &'static str) -> Row {
        r.schedule = Some(name);
        r
    }

    /// Operations with look-alike ids and kinds, LIKE and GLOB wildcards, NUL, non-ASCII
    /// text, error codes present (0 included) and absent, and times on either side of T0 and
    /// of the epoch by a microsecond.
    const ROWS: [Row; 9] = [
        scheduled(row("abc", "sleep", "QUEUED", None, T0), "schedules/nightly"),
        scheduled(
            row("abd", "snapshot", "RUNNING", None, T0 + 1),
            "schedules/night",
        ),
        scheduled(
            row("xabc", "sleepy", "SUCCEEDED", None, T0 - 1),
            "schedules/x",
        ),
        row("x_c", "Sleep", "FAILED", Some(5), 0),
        row("xyz", "sl%p", "FAILED", Some(0), -1),
        row("a%c", "", "CANCELLED", Some(1), 1),
        row("operations", "a\0b", "FAILED", Some(13), T0 + 3_600_000_000),
        row("日本", "日本語", "FAILED", Some(16), T0 - 3_600_000_000),
        row("[a]*?", "sl_ep", "RUNNING", None, T0 - 3_599_500_000),
    ];

    fn parse(filter: &str) -> Filter {
        Filter::parse(filter).unwrap_or_else(|e| panic!("{filter:?} should parse: {e}"))
    }

    /// An in-memory table holding `rows`, in order.
    fn table(rows: &[Row]) -> Connection {
        let conn = Connection::open_in_memory().expect("an in-memory database opens");
        conn.execute_batch(
            "CREATE TABLE ops (id TEXT NOT NULL, kind TEXT NOT NULL, done INTEGER NOT NULL, \
             state INTEGER NOT NULL, error_code INTEGER, create_time INTEGER NOT NULL, \
             update_time INTEGER NOT NULL, priority INTEGER NOT NULL, schedule TEXT)",
        )
        .expect("the table is created");
        for r in rows {
            let state = operation_metadata::State::from_str_name(r.state).expect("a state") as i32;
            conn.execute(
                "INSERT INTO ops VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.id,
                    r.kind,
                    r.done(),
                    state,
                    r.error_code,
                    r.create_time,
                    r.update_time,
                    r.priority,
                    r.schedule
                ],
            )
            .expect("the row is inserted");
        }
        conn
    }

    /// The ids of `rows` that `filter` selects in SQL, after checking that the SQL verdict on
    /// every row is 0 or 1 (never NULL) and equals [`Filter::matches`] on the operation the
    /// row describes.
    fn select(filter: &str, rows: &[Row]) -> Vec<&'static str> {
        let parsed = parse(filter);
        let sql = parsed.to_sqlite(&COLUMNS);
        let conn = table(rows);
        let query = format!("SELECT ({}) FROM ops ORDER BY rowid", sql.clause);
        let mut stmt = conn
            .prepare(&query)
            .unwrap_or_else(|e| panic!("{filter:?}: {e} in {query}"));
        let verdicts: Vec<Option<i64>> = stmt
            .query_map(params_from_iter(&sql.params), |r| r.get(0))
            .and_then(Iterator::collect)
            .unwrap_or_else(|e| panic!("{filter:?}: {e} in {query}"));
        let mut selected = Vec::new();
        for (r, verdict) in rows.iter().zip(verdicts) {
            let name = format!("operations/{}", r.id);
            let fields = FilterFields {
                name: &name,
                done: r.done(),
                kind: r.kind,
                state: r.state,
                error_code: r.error_code,
                create_time: from_micros(r.create_time),
                update_time: from_micros(r.update_time),
                priority: r.priority,
                schedule: r.schedule.unwrap_or_default(),
            };
            let expected = parsed.matches(&fields);
            assert_eq!(
                verdict,
                Some(i64::from(expected)),
                "{filter:?} on {r:?}: {} with {:?}",
                sql.clause,
                sql.params
            );
            if expected {
                selected.push(r.id);
            }
        }
        selected
    }

    /// Asserts that `filter` selects exactly `ids` of [`ROWS`], in SQL as in Rust.
    fn selects(filter: &str, ids: &[&str]) {
        assert_eq!(select(filter, &ROWS), ids, "{filter:?}");
    }

    /// The empty filter is the constant 1, with nothing to bind, and selects every row.
    #[test]
    fn empty_filter_is_true() {
        let sql = parse("  ").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "1");
        assert!(sql.params.is_empty());
        assert_eq!(select("", &ROWS).len(), ROWS.len());
    }

    /// What the user wrote reaches SQLite only as bound parameters: quotes, comment markers
    /// and SQL keywords in a value change nothing in the statement, and still match the one
    /// operation whose kind is exactly that text.
    #[test]
    fn values_are_bound_never_written_into_the_sql() {
        let hostile = "x' OR 1=1; DROP TABLE ops; --";
        let filter = format!("kind=\"{hostile}\" OR kind=\"*--*\"");
        let sql = parse(&filter).to_sqlite(&COLUMNS);
        assert!(!sql.clause.contains("DROP") && !sql.clause.contains("--"));
        assert_eq!(
            sql.clause,
            "((kind = ?) OR (length(CAST(kind AS BLOB)) >= ? AND instr(CAST(kind AS BLOB), ?) > 0))"
        );
        assert_eq!(
            sql.params,
            [
                SqlValue::Text(hostile.to_owned()),
                SqlValue::Integer(2),
                SqlValue::Blob(b"--".to_vec())
            ]
        );
        let rows = [row("a", hostile, "QUEUED", None, T0), ROWS[0]];
        assert_eq!(select(&filter, &rows), ["a"]);
    }

    /// `name` is the resource name `operations/{id}` while the column holds the id: full
    /// names and bare ids, exact or with a trailing `*`, compare with the id (an exact one
    /// through its index); an interior `*`, `%`, `_`, `?` and `[` are literal.
    #[test]
    fn name_exact_and_prefix_patterns_compare_the_id() {
        let sql = parse("name=operations/abc").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(id = ?)");
        assert_eq!(sql.params, [SqlValue::Text("abc".into())]);
        assert_eq!(parse("name=abc").to_sqlite(&COLUMNS), sql);
        selects("name=abc", &["abc"]);
        selects("name:abc", &["abc"]);
        selects("name=\"operations/abc\"", &["abc"]);
        selects(
            "name!=operations/abc",
            &[
                "abd",
                "xabc",
                "x_c",
                "xyz",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("name=ab*", &["abc", "abd"]);
        selects("name=operations/ab*", &["abc", "abd"]);
        selects(
            "name=operations/*",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "xyz",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("name=operations/", &[]);
        selects("name=x_c", &["x_c"]);
        selects("name=x_*", &["x_c"]);
        selects("name=a%c", &["a%c"]);
        selects("name=a%*", &["a%c"]);
        selects("name=\"[a]*?\"", &["[a]*?"]);
        selects("name=\"[a]*\"", &["[a]*?"]);
        selects("name=\"[*\"", &["[a]*?"]);
        selects("name=日*", &["日本"]);
        selects("name=a*c", &[]);
        // A bare pattern tests the id only: "ions/" is not found in the prefix.
        selects("name=*op*", &["operations"]);
        selects("name=*ions/*", &[]);
        selects("name=operations", &["operations"]);
    }

    /// A full-name pattern with a leading `*` is tested against `operations/` and the id
    /// joined, so it may match across the two; a bare one tests the id alone.
    #[test]
    fn name_patterns_with_a_leading_star() {
        selects("name=*bc", &["abc", "xabc"]);
        selects("name=*operations/abc", &["abc"]);
        selects(
            "name=*operations/*",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "xyz",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("name=\"*operations/operations\"", &["operations"]);
        selects("name=*s/xy*", &[]);
        selects("name=*xy*", &["xyz"]);
        selects("name=*本", &["日本"]);
        selects(
            "name=*",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "xyz",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("-name=**", &[]);
        selects("name!=*a*", &["x_c", "xyz", "日本"]);
    }

    /// Kind patterns are exact, case-sensitive and byte-wise: `%` and `_` (LIKE's wildcards)
    /// and `?` and `[` (GLOB's) are literal, NUL is an ordinary character, and a suffix longer
    /// than the kind does not match.
    #[test]
    fn kind_patterns_are_literal_and_case_sensitive() {
        selects("kind=sleep", &["abc"]);
        selects("metadata.kind='Sleep'", &["x_c"]);
        selects("kind=SLEEP", &[]);
        selects("kind=sl*", &["abc", "xabc", "xyz", "[a]*?"]);
        selects("kind=Sl*", &["x_c"]);
        selects("kind=sl_*", &["[a]*?"]);
        selects("kind=sl%*", &["xyz"]);
        selects("kind=*%*", &["xyz"]);
        selects("kind=*_*", &["[a]*?"]);
        selects("kind=*eep", &["abc", "x_c"]);
        selects("kind=\"*a sleep\"", &[]);
        selects("kind=*eep*", &["abc", "xabc", "x_c"]);
        selects("kind=\"\"", &["a%c"]);
        selects(
            "kind!=\"\"",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "xyz",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("kind=**", &ROWS.map(|r| r.id));
        selects("kind=\"a\u{0}*\"", &["operations"]);
        selects("kind=\"*\u{0}b\"", &["operations"]);
        selects("kind=\"a\u{0}b\"", &["operations"]);
        selects("kind=\"a\"", &[]);
        selects("kind=日本*", &["日本"]);
        selects("kind=*本語", &["日本"]);
        selects("kind=*本*", &["日本"]);
        selects("kind!=sl*", &["abd", "x_c", "a%c", "operations", "日本"]);
        selects("kind:*", &ROWS.map(|r| r.id));
    }

    /// `done` and `state` compare with the 0/1 column and the enum number, written as numbers
    /// (the store's partial indexes need them literal), with `=`, `!=` and `:`; a state says
    /// whether it is done; `:*` holds for every operation.
    #[test]
    fn done_and_state() {
        let sql = parse("done=false").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(done = 0)");
        assert!(sql.params.is_empty());
        selects("done=false", &["abc", "abd", "[a]*?"]);
        selects("done!=true", &["abc", "abd", "[a]*?"]);
        selects("done:false", &["abc", "abd", "[a]*?"]);
        selects(
            "done=true",
            &["xabc", "x_c", "xyz", "a%c", "operations", "日本"],
        );
        selects(
            "done!=false",
            &["xabc", "x_c", "xyz", "a%c", "operations", "日本"],
        );
        selects("done:*", &ROWS.map(|r| r.id));
        let sql = parse("state=RUNNING").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(done = 0 AND state = 2)");
        assert!(sql.params.is_empty());
        assert_eq!(
            parse("state=CANCELLED").to_sqlite(&COLUMNS).clause,
            "(done = 1 AND state = 5)"
        );
        assert_eq!(
            parse("-state=CANCELLED").to_sqlite(&COLUMNS).clause,
            "NOT (done = 1 AND state = 5)"
        );
        selects("state=QUEUED", &["abc"]);
        selects("metadata.state:RUNNING", &["abd", "[a]*?"]);
        selects("state=SUCCEEDED", &["xabc"]);
        selects("state=FAILED", &["x_c", "xyz", "operations", "日本"]);
        selects("state=CANCELLED", &["a%c"]);
        selects("state!=FAILED", &["abc", "abd", "xabc", "a%c", "[a]*?"]);
        selects("state:*", &ROWS.map(|r| r.id));
    }

    /// `error.code` compares by number or `google.rpc.Code` name with every operator.
    #[test]
    fn error_code_comparisons() {
        selects("error.code=5", &["x_c"]);
        selects("error.code=NOT_FOUND", &["x_c"]);
        selects("error.code:NOT_FOUND", &["x_c"]);
        selects("error.code=OK", &["xyz"]);
        selects("error.code=0", &["xyz"]);
        selects("error.code<5", &["xyz", "a%c"]);
        selects("error.code<=NOT_FOUND", &["x_c", "xyz", "a%c"]);
        selects("error.code>5", &["operations", "日本"]);
        selects("error.code>=INTERNAL", &["operations", "日本"]);
        selects(
            "error.code>=0",
            &["x_c", "xyz", "a%c", "operations", "日本"],
        );
        selects("error.code=UNAUTHENTICATED", &["日本"]);
        selects("error.code=CANCELLED", &["a%c"]);
    }

    /// `priority` compares as an integer with every operator, negative values included; a
    /// value that is not an integer is refused.
    #[test]
    fn priority_comparisons() {
        let priorities: Vec<(&str, i32)> = ROWS.iter().map(|r| (r.id, r.priority)).collect();
        for (filter, holds) in [
            ("priority=0", (|p| p == 0) as fn(i32) -> bool),
            ("priority!=0", |p| p != 0),
            ("priority>0", |p| p > 0),
            ("metadata.priority>=-1", |p| p >= -1),
            ("priority<-2", |p| p < -2),
            ("priority<=2", |p| p <= 2),
        ] {
            let want: Vec<&str> = priorities
                .iter()
                .filter(|(_, p)| holds(*p))
                .map(|(id, _)| *id)
                .collect();
            assert!(
                !want.is_empty() && want.len() < ROWS.len(),
                "{filter}: {want:?}"
            );
            selects(filter, &want);
        }
        let err = Filter::parse("priority=high").unwrap_err();
        assert!(err.to_string().contains("invalid priority"), "{err}");
    }

    /// `schedule` compares the full name, a bare id as `schedules/ID`; an operation without
    /// one (NULL) is the empty string, so `!=` selects it and no verdict is NULL; an exact
    /// name is an equality on the column (which its index serves).
    #[test]
    fn schedule_comparisons() {
        let all: Vec<&str> = ROWS.iter().map(|r| r.id).collect();
        let unscheduled: Vec<&str> = all[3..].to_vec();
        selects("schedule=nightly", &["abc"]);
        selects("schedule = \"schedules/nightly\"", &["abc"]);
        selects("metadata.schedule:night", &["abd"]);
        selects("schedule=night*", &["abc", "abd"]);
        selects("schedule=*ight", &["abd"]);
        selects("schedule=\"schedules/*\"", &["abc", "abd", "xabc"]);
        selects("schedule:*", &all);
        selects("schedule=\"\"", &unscheduled);
        let mut not_nightly = vec!["abd", "xabc"];
        not_nightly.extend(&unscheduled);
        selects("schedule!=nightly", &not_nightly);
        selects("NOT schedule=nightly", &not_nightly);
        let sql = parse("schedule=nightly").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(schedule IS NOT NULL AND (schedule = ?))");
        let err = Filter::parse("schedule>x").unwrap_err();
        assert!(err.to_string().contains("schedule"), "{err}");
    }

    /// Without an error the code column is NULL, and as in Rust every `error.code` test is
    /// false except `!=`; negating one is true. No verdict is NULL (the harness checks each
    /// one), so `NOT` and `OR` around a NULL code agree with Rust.
    #[test]
    fn missing_error_code_is_false_except_for_not_equal() {
        let no_error = ["abc", "abd", "xabc", "[a]*?"];
        let with_error = ["x_c", "xyz", "a%c", "operations", "日本"];
        for filter in [
            "error.code=0",
            "error.code=OK",
            "error.code:5",
            "error.code<16",
            "error.code<=16",
            "error.code>0",
            "error.code>=0",
        ] {
            let selected = select(filter, &ROWS);
            assert!(
                no_error.iter().all(|id| !selected.contains(id)),
                "{filter}: {selected:?}"
            );
            let negated = select(&format!("NOT {filter}"), &ROWS);
            assert!(
                no_error.iter().all(|id| negated.contains(id)),
                "NOT {filter}: {negated:?}"
            );
            select(&format!("-{filter} OR done=false"), &ROWS);
            select(&format!("({filter} OR kind=sleep) state!=FAILED"), &ROWS);
        }
        selects(
            "error.code!=5",
            &[
                "abc",
                "abd",
                "xabc",
                "xyz",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects(
            "error.code!=OK",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("NOT error.code!=5", &["x_c"]);
        selects("error:*", &with_error);
        selects("error.code:*", &with_error);
        selects("NOT error:*", &no_error);
        selects("-error.code:*", &no_error);
        let sql = parse("error.code!=5").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(error_code IS NOT ?)");
        let sql = parse("error.code<5").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(error_code IS NOT NULL AND error_code < ?)");
    }

    /// Times compare as Rust compares the column's microsecond instant with the filter's
    /// nanosecond one: a bound between two microseconds rounds the way that keeps the
    /// answer, on either side of the epoch, with offsets, fractions and dates alone.
    #[test]
    fn times_round_to_the_column_microsecond() {
        let sql = parse("create_time>=2026-01-02T15:04:05.0000005Z").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "(create_time >= ?)");
        assert_eq!(sql.params, [SqlValue::Integer(T0 + 1)]);
        selects("create_time=2026-01-02T15:04:05Z", &["abc"]);
        selects("create_time:2026-01-02T16:04:05+01:00", &["abc"]);
        selects("create_time=2026-01-02T15:04:05.000001Z", &["abd"]);
        selects("create_time=2026-01-02T15:04:05.0000005Z", &[]);
        selects(
            "create_time!=2026-01-02T15:04:05.0000005Z",
            &ROWS.map(|r| r.id),
        );
        selects(
            "create_time>2026-01-02T15:04:05.0000005Z",
            &["abd", "operations"],
        );
        selects(
            "create_time>=2026-01-02T15:04:05.0000005Z",
            &["abd", "operations"],
        );
        selects(
            "create_time<2026-01-02T15:04:05.0000005Z",
            &["abc", "xabc", "x_c", "xyz", "a%c", "日本", "[a]*?"],
        );
        selects(
            "create_time<=2026-01-02T15:04:05.0000005Z",
            &["abc", "xabc", "x_c", "xyz", "a%c", "日本", "[a]*?"],
        );
        selects(
            "create_time<2026-01-02T15:04:05Z",
            &["xabc", "x_c", "xyz", "a%c", "日本", "[a]*?"],
        );
        selects(
            "create_time<=2026-01-02T15:04:05Z",
            &["abc", "xabc", "x_c", "xyz", "a%c", "日本", "[a]*?"],
        );
        selects("create_time>2026-01-02T15:04:05Z", &["abd", "operations"]);
        selects(
            "create_time>=2026-01-02T14:04:05.5Z",
            &["abc", "abd", "xabc", "operations", "[a]*?"],
        );
        selects(
            "create_time>2026-01-02T15:04:05.5+01:00",
            &["abc", "abd", "xabc", "operations"],
        );
        // Around the epoch, where flooring and truncation differ.
        selects("create_time=1970-01-01T00:00:00Z", &["x_c"]);
        selects("create_time<1970-01-01T00:00:00Z", &["xyz"]);
        selects("create_time<1969-12-31T23:59:59.9999995Z", &["xyz"]);
        selects("create_time<=1969-12-31T23:59:59.9999995Z", &["xyz"]);
        selects(
            "create_time>1969-12-31T23:59:59.9999995Z",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects(
            "create_time>=1969-12-31T23:59:59.9999995Z",
            &[
                "abc",
                "abd",
                "xabc",
                "x_c",
                "a%c",
                "operations",
                "日本",
                "[a]*?",
            ],
        );
        selects("create_time<1970-01-01", &["xyz"]);
        selects(
            "create_time>=2026-01-02",
            &["abc", "abd", "xabc", "operations", "日本", "[a]*?"],
        );
        selects("update_time=2026-01-02T15:05:05.5Z", &["abc"]);
        selects(
            "metadata.update_time>2026-01-02T15:05:05.5Z",
            &["abd", "operations"],
        );
        selects("update_time:*", &ROWS.map(|r| r.id));
        selects("create_time>=0001-01-01T00:00:00Z", &ROWS.map(|r| r.id));
        selects(
            "create_time<9999-12-31T23:59:59.999999999Z",
            &ROWS.map(|r| r.id),
        );
    }

    /// AND, OR, NOT, `-` and juxtaposition combine as the parser groups them (OR binding
    /// tighter than AND), also when the SQL is joined with another condition.
    #[test]
    fn combinations_keep_their_grouping() {
        selects("done=true AND kind=sleepy OR kind=sleep", &["xabc"]);
        selects(
            "(done=true AND kind=sleepy) OR kind=sleep",
            &["abc", "xabc"],
        );
        selects("kind=sl* state=FAILED OR state=RUNNING", &["xyz", "[a]*?"]);
        selects("NOT kind=sleep OR done=false", &ROWS.map(|r| r.id));
        selects("NOT kind=sleep AND done=false", &["abd", "[a]*?"]);
        selects("NOT (kind=sleep OR done=true)", &["abd", "[a]*?"]);
        selects("-(NOT (kind=sleep))", &["abc"]);
        selects("NOT (NOT error.code=5)", &["x_c"]);
        selects(
            "-error.code<5 -name=a* done=true",
            &["xabc", "x_c", "operations", "日本"],
        );
        let sql = parse("kind=a OR kind=b OR kind=c").to_sqlite(&COLUMNS);
        assert_eq!(sql.clause, "((kind = ?) OR ((kind = ?) OR (kind = ?)))");
        // Joined with a condition of the caller's, an OR stays inside its parentheses.
        let conn = table(&ROWS);
        let sql = parse("kind=sleep OR kind=sl_ep").to_sqlite(&COLUMNS);
        let query = format!(
            "SELECT id FROM ops WHERE rowid > ? AND ({}) ORDER BY rowid",
            sql.clause
        );
        let mut stmt = conn.prepare(&query).expect("the query prepares");
        let params = std::iter::once(SqlValue::Integer(1)).chain(sql.params);
        let ids: Vec<String> = stmt
            .query_map(params_from_iter(params), |r| r.get(0))
            .and_then(Iterator::collect)
            .expect("the query runs");
        assert_eq!(ids, ["[a]*?"]);
    }

    /// The largest filters the parser accepts compile to SQL that SQLite takes: the most
    /// terms that fit in the length limit, joined by AND, by OR or side by side (the balanced
    /// tree keeps the expression within SQLite's depth limit), and the deepest nesting of
    /// parentheses and negations.
    #[test]
    fn largest_filters_run_in_sqlite() {
        for (term, joint) in [
            ("kind=a", " "),
            ("kind=a", " AND "),
            ("kind=a", " OR "),
            ("-error.code=5", " "),
            ("name=*b*", " OR "),
        ] {
            let count = (MAX_FILTER_LEN + joint.len()) / (term.len() + joint.len());
            let filter = vec![term; count].join(joint);
            assert!(filter.len() <= MAX_FILTER_LEN);
            select(&filter, &ROWS);
        }
        let depth = MAX_DEPTH;
        for (open, close) in [
            ("(", ")"),
            ("NOT (", ")"),
            ("-(", ")"),
            ("(kind=x OR ", ")"),
        ] {
            let filter = format!("{}error.code<5{}", open.repeat(depth), close.repeat(depth));
            select(&filter, &ROWS);
        }
    }

    /// A time bound beyond what a column of i64 microseconds can hold compiles to the
    /// constant answer every row gets.
    #[test]
    fn times_beyond_the_column_range_are_constants() {
        let far = Duration::from_secs(1 << 62);
        let rows = [
            row("min", "k", "QUEUED", None, i64::MIN),
            row("max", "k", "QUEUED", None, i64::MAX - 60_500_000),
        ];
        for (op, later, earlier) in [
            (Op::Lt, "1", "0"),
            (Op::Le, "1", "0"),
            (Op::Gt, "0", "1"),
            (Op::Ge, "0", "1"),
            (Op::Eq, "0", "0"),
            (Op::Has, "0", "0"),
            (Op::Ne, "1", "1"),
        ] {
            for (value, clause) in [(UNIX_EPOCH + far, later), (UNIX_EPOCH - far, earlier)] {
                let filter = Filter {
                    expr: Some(Expr::Test(Test::CreateTime { op, value })),
                };
                let sql = filter.to_sqlite(&COLUMNS);
                assert_eq!(sql.clause, clause, "{op:?} {value:?}");
                for r in &rows {
                    let fields = FilterFields {
                        name: r.id,
                        done: false,
                        kind: r.kind,
                        state: r.state,
                        error_code: None,
                        create_time: from_micros(r.create_time),
                        update_time: from_micros(r.update_time),
                        priority: r.priority,
                        schedule: r.schedule.unwrap_or_default(),
                    };
                    assert_eq!(filter.matches(&fields), clause == "1", "{op:?} {r:?}");
                }
            }
        }
    }
}
