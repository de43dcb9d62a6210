//! The filter's tests: parsing, errors and their positions, evaluation, and fuzzing.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

#[test]
fn created_after_is_the_latest_lower_bound_every_match_meets() {
    let at = |s: &str| {
        SystemTime::try_from(<prost_types::Timestamp as std::str::FromStr>::from_str(s).unwrap())
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
        SystemTime::try_from(<prost_types::Timestamp as std::str::FromStr>::from_str(s).unwrap())
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

/// The state names the filter accepts (the wire's), written out as the spec says them.
const STATES: [&str; 5] = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

/// The `google.rpc.Code` names, indexed by number, written out as the spec says them.
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
