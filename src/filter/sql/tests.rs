//! The SQL a filter compiles to, run by SQLite over rows and compared with what
//! [`Filter::matches`] says of the same operations.

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
