//! The `oprun` client subcommands as a person meets them: what they print, how they fail, and
//! their exit codes (0 succeeded, 1 failed, 2 usage, 3 the operation ended with an error,
//! 4 a wait timed out).

mod common;

use std::process::Output;

use common::binary::{oprun, run_to_exit, BinServer};

async fn cli(args: &[&str]) -> Output {
    run_to_exit(oprun().args(args)).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The name on the first line of a command's human output.
fn name_of(o: &Output) -> String {
    stdout(o)
        .split_whitespace()
        .next()
        .expect("an operation name")
        .to_owned()
}

/// Issue 6, item 12: the README tour's `{"duration":"1h"}` failed with "failed to parse
/// duration"; now the message names the field and says what proto3 JSON accepts (exit 1).
#[tokio::test]
async fn a_bad_duration_says_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let addr = server.addr.to_string();
    let out = cli(&[
        "submit",
        "sleep",
        "--input",
        r#"{"duration":"1h"}"#,
        "--addr",
        &addr,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(r#"field "duration": "1h" is not a Duration"#),
        "{err}"
    );
    assert!(err.contains(r#""90s""#) && err.contains("3600s"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// Issue 6, item 14: a connection failure is one line with the OS's words once and a hint, and
/// an address without a scheme means http://.
#[tokio::test]
async fn connection_errors_are_one_line_with_a_hint() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    for addr in [
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let out = cli(&["get", "operations/x", "--addr", &addr]).await;
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(
            err.matches("Connection refused").count(),
            1,
            "no repeats: {err}"
        );
        assert!(
            err.contains(&format!("is `oprun serve` running on 127.0.0.1:{port}?")),
            "{err}"
        );
        assert!(!err.contains("scheme is missing"), "{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let out = cli(&["kinds", "--addr", &server.addr.to_string()]).await;
    assert!(
        out.status.success(),
        "host:port alone works: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("sleep"));
}

/// Issue 6, item 15: `wait` and `watch` agree on exit codes: 0 when the operation succeeded,
/// 3 when it ended with an error, 4 when a wait timed out; 2 for a wrong command line.
#[tokio::test]
async fn wait_and_watch_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let addr = server.addr.to_string();
    let submit = |input: &'static str| {
        let addr = addr.clone();
        async move { cli(&["submit", "sleep", "--input", input, "--addr", &addr]).await }
    };

    let ok = name_of(&submit(r#"{"duration":"0.2s"}"#).await);
    let failing = name_of(&submit(r#"{"duration":"0.2s","failMessage":"boom"}"#).await);
    let long = name_of(&submit(r#"{"duration":"30s"}"#).await);

    for (cmd, name, code) in [
        ("wait", &ok, 0),
        ("watch", &ok, 0),
        ("wait", &failing, 3),
        ("watch", &failing, 3),
    ] {
        let out = cli(&[cmd, name, "--addr", &addr]).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{cmd} {name}: {}",
            stderr(&out)
        );
        if code == 3 {
            assert!(
                stderr(&out).contains("ended with Unknown (2): boom"),
                "{}",
                stderr(&out)
            );
        }
    }
    let out = cli(&["wait", &long, "--timeout", "1s", "--addr", &addr]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not done after 1s"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("RUNNING"),
        "it shows the state: {}",
        stdout(&out)
    );

    let usage = cli(&["wait"]).await;
    assert_eq!(usage.status.code(), Some(2));
    let unknown = cli(&["get", "operations/nope", "--addr", &addr]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("NotFound"),
        "{}",
        stderr(&unknown)
    );
}

/// Issue 6, item 15: `watch` with stdout not a terminal prints one line per change (a QUEUED
/// operation shows as QUEUED, not as a full bar); `list` has a header and create times; `get`
/// shows the times, attempt and deadline; both show the node that ran it (issue 8).
#[tokio::test]
async fn watch_list_and_get_show_what_a_person_needs() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(
        dir.path(),
        "127.0.0.1:0",
        &["--max-running", "1", "--node-id", "node-a"],
        &[],
    );
    let addr = server.addr.to_string();
    let first = cli(&[
        "submit",
        "sleep",
        "--input",
        r#"{"duration":"1s","steps":4}"#,
        "--addr",
        &addr,
    ])
    .await;
    // Waits behind the first (one at a time), so watch sees it QUEUED first.
    let second = cli(&[
        "submit",
        "sleep",
        "--input",
        r#"{"duration":"1.2s","steps":4}"#,
        "--timeout",
        "1h",
        "--addr",
        &addr,
    ])
    .await;
    let name = name_of(&second);
    let out = cli(&["watch", &name, "--addr", &addr]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The change lines, then the operation as `get` shows it.
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("operations/"))
        .collect();
    assert!(lines[0].contains(" QUEUED"), "{text}");
    assert!(!lines[0].contains("0/0"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" RUNNING") && l.contains("steps")),
        "{text}"
    );
    assert!(
        lines.len() <= 6,
        "one line per change, at most one a second: {text}"
    );
    assert!(lines.last().unwrap().contains(" SUCCEEDED"), "{text}");

    let list = cli(&["list", "--addr", &addr]).await;
    let table = stdout(&list);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "KIND", "STATE", "CREATED", "PROGRESS", "NODE"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table
            .lines()
            .filter(|l| l.starts_with("operations/"))
            .all(|l| l.trim_end().ends_with("node-a")),
        "every row ran on node-a: {table}"
    );
    assert!(
        table.contains(&name_of(&first)) && table.contains(&name),
        "{table}"
    );
    assert!(
        table.contains("T") && table.contains("Z"),
        "create times: {table}"
    );

    let get = cli(&["get", &name, "--addr", &addr]).await;
    let shown = stdout(&get);
    for field in [
        "created:",
        "started:",
        "ended:",
        "attempt:",
        "deadline:",
        "response:",
    ] {
        assert!(shown.contains(field), "{field} in {shown}");
    }
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("node:") && l.trim_end().ends_with(" node-a")),
        "the node in {shown}"
    );
}

/// `oprun migrate` brings a PostgreSQL schema up to date (then says it is up to date), and
/// when it cannot, says why in one line: the reason the driver keeps behind "error
/// connecting to server", a URL that is not PostgreSQL's, the embedded store.
#[tokio::test]
async fn migrate_says_what_it_did_or_why_not() {
    let db = oprun::store::postgres::testing::TestDatabase::create("migrate").await;
    let url = db.url();
    let first = cli(&["migrate", "--store", &url]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let version = oprun::store::postgres::schema::VERSION;
    assert_eq!(
        stdout(&first).trim(),
        format!("schema version {version} (was 0)")
    );
    let again = cli(&["migrate", "--store", &url]).await;
    assert_eq!(
        stdout(&again).trim(),
        format!("schema version {version}: up to date")
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let refused = cli(&[
        "migrate",
        "--store",
        &format!("postgres://root@127.0.0.1:{port}/nothing"),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1));
    let said = stderr(&refused);
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("refused"), "the reason: {said}");

    for (store, expected) in [
        ("sqlite", "brings its schema up to date itself"),
        ("mysql://x", "expected `sqlite`"),
    ] {
        let out = cli(&["migrate", "--store", store]).await;
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{store}: {}", stderr(&out));
    }
}

/// The `--json` form of `get NAME`.
async fn get_json(addr: &str, name: &str) -> serde_json::Value {
    let out = cli(&["--addr", addr, "--json", "get", name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Issue 21, item 4: the command line as a newcomer expects it. Connection flags go before
/// the subcommand too; `submit -q` prints the name alone and `--delay` is a relative
/// not-before; `list` is newest first with `--oldest` and `--limit`; `rerun` runs a finished
/// operation again; `cancel` of a finished operation says how it ended (exit 5); `submit`'s
/// deadline is `--deadline-in`; `delete --help` shows deleting.
#[tokio::test]
async fn the_command_line_reads_as_a_newcomer_expects() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let addr = server.addr.to_string();
    let quick = r#"{"duration":"0.01s"}"#;

    // Global flags first; -q prints the name alone.
    let mut names = Vec::new();
    for _ in 0..3 {
        let out = cli(&["--addr", &addr, "submit", "sleep", "--input", quick, "-q"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("operations/"), "{text}");
        names.push(text.trim().to_owned());
    }
    for name in &names {
        let out = cli(&["--addr", &addr, "wait", name]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // Newest first by default; --oldest; --limit.
    let listed = |args: &'static [&'static str]| {
        let addr = addr.clone();
        async move {
            let mut all = vec!["list", "--addr", &addr];
            all.extend_from_slice(args);
            let out = cli(&all).await;
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out)
        }
    };
    let order = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.starts_with("operations/"))
            .map(str::to_owned)
            .collect()
    };
    let newest: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(order(&listed(&[]).await), newest);
    assert_eq!(order(&listed(&["--oldest"]).await), names);
    let one = listed(&["--limit", "1"]).await;
    assert_eq!(order(&one), newest[..1]);
    assert!(one.contains("next page: --page-token "), "{one}");
    let token = one
        .lines()
        .find_map(|l| l.strip_prefix("next page: --page-token "))
        .unwrap()
        .to_owned();
    let out = cli(&[
        "list",
        "--addr",
        &addr,
        "--page-token",
        &token,
        "--limit",
        "0",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(order(&stdout(&out)), newest[1..]);

    // --delay: queued until five minutes from now.
    let before = std::time::SystemTime::now();
    let out = cli(&[
        "--addr", &addr, "submit", "sleep", "--input", quick, "--delay", "5m", "-q",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let delayed = stdout(&out).trim().to_owned();
    let op = get_json(&addr, &delayed).await;
    assert_eq!(op["metadata"]["state"], "QUEUED", "{op}");
    let due: std::time::SystemTime = humantime::parse_rfc3339(
        op["metadata"]["nextAttemptTime"]
            .as_str()
            .unwrap_or_else(|| panic!("no nextAttemptTime: {op}")),
    )
    .unwrap();
    let ahead = due.duration_since(before).unwrap().as_secs();
    assert!((295..=305).contains(&ahead), "due {ahead} s from now");
    let both = cli(&[
        "submit",
        "sleep",
        "--delay",
        "5m",
        "--not-before",
        "2026-11-22T08:00:00Z",
        "--addr",
        &addr,
    ])
    .await;
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));

    // cancel: of a finished operation, how it ended and exit 5; of a queued one, done.
    let out = cli(&["--addr", &addr, "cancel", &names[0]]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{} was already done: SUCCEEDED", names[0])),
        "{}",
        stderr(&out)
    );
    let out = cli(&["--addr", &addr, "cancel", &delayed]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let op = get_json(&addr, &delayed).await;
    assert_eq!(op["metadata"]["state"], "CANCELLED", "{op}");

    // rerun: a new operation of the same kind and input.
    let out = cli(&["--addr", &addr, "rerun", &names[0], "-q"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let again = stdout(&out).trim().to_owned();
    assert!(
        again.starts_with("operations/") && again != names[0],
        "{again}"
    );
    let out = cli(&["--addr", &addr, "wait", &again]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get_json(&addr, &again).await["metadata"]["kind"], "sleep");
    let out = cli(&["--addr", &addr, "rerun", "operations/nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // submit's deadline is --deadline-in (--timeout still reads the same), and the help says
    // it is not a wait.
    for flag in ["--deadline-in", "--timeout"] {
        let out = cli(&[
            "--addr", &addr, "submit", "sleep", "--input", quick, flag, "1m", "-q",
        ])
        .await;
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        let op = get_json(&addr, stdout(&out).trim()).await;
        assert!(op["metadata"]["deadline"].is_string(), "{flag}: {op}");
    }
    let help = stdout(&cli(&["submit", "--help"]).await);
    assert!(help.contains("--deadline-in"), "{help}");
    assert!(help.contains("oprun wait --timeout"), "{help}");
    let help = stdout(&cli(&["delete", "--help"]).await);
    assert!(
        help.contains("oprun delete --filter 'state = CANCELLED'"),
        "{help}"
    );
}

/// `oprun nodes --json`'s nodes.
async fn nodes_json(addr: &str) -> Vec<serde_json::Value> {
    let out = cli(&["--addr", addr, "--json", "nodes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// Issue 21, item 5: the node of an embedded store keeps its id across restarts (kept in the
/// data directory), shows that it holds the store instead of a lease that looks expired, and
/// the nodes of earlier runs are not listed (on main: a new random id per start, the live
/// node's lease "expired 36 s ago", and a dead node from the run before with a lease of 1970).
#[tokio::test]
async fn an_embedded_node_keeps_its_name_and_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let addr = server.addr.to_string();
    let nodes = nodes_json(&addr).await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let id = nodes[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(nodes[0]["live"], true, "{nodes:?}");
    assert_eq!(nodes[0]["holdsStore"], true, "{nodes:?}");
    assert!(nodes[0].get("leaseExpireTime").is_none(), "{nodes:?}");

    // Killed while it runs an operation.
    let out = cli(&[
        "--addr",
        &addr,
        "submit",
        "-q",
        "sleep",
        "--input",
        r#"{"duration":"3600s"}"#,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let op = stdout(&out).trim().to_owned();
    let running = async {
        loop {
            if get_json(&addr, &op).await["metadata"]["state"] == "RUNNING" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("RUNNING within 10 s");
    drop(server); // SIGKILL

    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let addr = server.addr.to_string();
    let nodes = nodes_json(&addr).await;
    assert_eq!(nodes.len(), 1, "only this run's node: {nodes:?}");
    assert_eq!(nodes[0]["id"], id.as_str(), "the same id after a restart");
    assert_eq!(nodes[0]["holdsStore"], true, "{nodes:?}");
    // The operation it held was taken over, and runs under the same name.
    let again = async {
        loop {
            let got = get_json(&addr, &op).await;
            if got["metadata"]["state"] == "RUNNING" && got["metadata"]["attempt"] == 2 {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), again)
        .await
        .expect("running again within 10 s");
    assert_eq!(got["metadata"]["node"], id.as_str(), "{got}");
    let table = stdout(&cli(&["--addr", &addr, "nodes"]).await);
    assert!(table.contains("holds the store"), "{table}");
    assert!(!table.contains("1970"), "{table}");
}

/// `submit --priority/-p`, `--unique-key` and `--max-attempts` reach the operation: `get`
/// shows them, `list` has a PRI column and filters on `priority`; a second submission of a
/// held unique key prints the holder's name; a priority out of range is refused (exit 1).
#[tokio::test]
async fn submit_takes_a_priority_a_unique_key_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &["--max-running", "1"], &[]);
    let addr = server.addr.to_string();
    let submit = |extra: &[&str]| {
        let mut args = vec![
            "submit",
            "sleep",
            "--input",
            r#"{"duration":"60s"}"#,
            "-q",
            "--addr",
            &addr,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs).await
    };
    let busy = run(submit(&[])).await;
    assert!(busy.status.success(), "{}", stderr(&busy));
    let keyed = run(submit(&[
        "-p",
        "-7",
        "--unique-key",
        "db-1",
        "--max-attempts",
        "2",
    ]))
    .await;
    assert!(keyed.status.success(), "{}", stderr(&keyed));
    let name = stdout(&keyed).trim().to_owned();
    let again = run(submit(&["--unique-key", "db-1"])).await;
    assert_eq!(stdout(&again).trim(), name, "the holder of the key");
    let shown = stdout(&cli(&["get", &name, "--addr", &addr]).await);
    for line in ["priority:    -7", "unique key:  db-1", "max attempts:2"] {
        assert!(shown.contains(line), "{line:?} in {shown}");
    }
    let table = stdout(&cli(&["list", "--filter", "priority < 0", "--addr", &addr]).await);
    assert!(table.lines().next().unwrap().contains("PRI"), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("operations/"))
        .collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(
        rows[0].contains(&name) && rows[0].contains(" -7 "),
        "{table}"
    );
    let refused = run(submit(&["--priority", "101"])).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("from -100 to 100"),
        "{}",
        stderr(&refused)
    );
}
