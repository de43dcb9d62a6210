//! Integrity checks of the database file: SQLite's `quick_check` before the store is used
//! (every page and b-tree, not the indexes' agreement with the table), and a thorough check for
//! operators, `oprun store check` (SQLite's `integrity_check`, then every row read back).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{row_to_record, COLUMNS, DATABASE_FILE};
use crate::store::StoreError;

/// At most this many problems are listed; more are counted.
const MAX_LISTED: usize = 100;

/// SQLite's `quick_check`: the problems it finds (none when the file is sound).
///
/// # Errors
/// The SQLite error when the check itself cannot run (a file that is not a database).
pub(super) fn quick(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    pragma_check(conn, "quick_check")
}

/// Runs `PRAGMA {pragma}({MAX_LISTED})`, which answers one row "ok" or one row per problem.
fn pragma_check(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_LISTED})"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(if rows.len() == 1 && rows[0] == "ok" {
        Vec::new()
    } else {
        rows
    })
}

/// The first few problems on one line, for an error message.
pub(super) fn summarize(problems: &[String]) -> String {
    let mut line = problems
        .iter()
        .take(3)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 3 {
        line.push_str(&format!("; and {} more", problems.len() - 3));
    }
    line
}

/// What `oprun store check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The database file checked.
    pub path: PathBuf,
    /// Operations read back whole.
    pub readable: u64,
    /// What is damaged (empty when the file is sound), at most 100 of each kind.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether nothing is damaged.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the store in data directory `dir` thoroughly: every page and index
/// (`integrity_check`), then every operation read back and decoded.
///
/// It only reads and takes no lock, so it may run beside a server on the same directory (it
/// then sees one moment of a changing file).
///
/// # Errors
/// [`StoreError::Unavailable`] when there is no store in `dir` or it cannot be opened.
pub fn run(dir: &Path) -> Result<Report, StoreError> {
    let path = dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(StoreError::unavailable(format!(
            "there is no store in {} (no {DATABASE_FILE})",
            dir.display()
        )));
    }
    // Read-only: the check must not change the file an operator may want to restore (a
    // read-write connection that is the last to close would checkpoint the log into it).
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
            StoreError::unavailable_because(format!("cannot open {}: {e}", path.display()), e)
        })?;
    let mut problems = match pragma_check(&conn, "integrity_check") {
        Ok(problems) => problems,
        Err(e) => vec![format!("the file cannot be checked: {e}")],
    };
    let mut readable = 0;
    let mut undecodable = 0usize;
    // A database of the first schema version (not opened by a newer oprun yet) lacks the
    // columns the current one reads; its bodies hold those fields.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap_or(0);
    let columns = if version < 2 {
        "seq, id, request_id, input, body, NULL, state, 1, NULL, 1, NULL, update_time, \
         end_time, NULL, NULL, 0"
            .to_owned()
    } else {
        COLUMNS.to_owned()
    };
    let rows = conn
        .prepare(&format!("SELECT {columns} FROM operations ORDER BY seq"))
        .and_then(|mut stmt| {
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                match row_to_record(row).map(super::RawRow::decode) {
                    Ok(Ok(_)) => readable += 1,
                    Ok(Err(e)) => {
                        undecodable += 1;
                        if undecodable <= MAX_LISTED {
                            problems.push(e.to_string());
                        }
                    }
                    Err(e) => {
                        undecodable += 1;
                        if undecodable <= MAX_LISTED {
                            problems.push(format!("a row cannot be read: {e}"));
                        }
                    }
                }
            }
            Ok(())
        });
    if let Err(e) = rows {
        problems.push(format!(
            "reading the operations stopped after {readable} of them: {e}"
        ));
    }
    if undecodable > MAX_LISTED {
        problems.push(format!(
            "{} more operations cannot be read",
            undecodable - MAX_LISTED
        ));
    }
    Ok(Report {
        path,
        readable,
        problems,
    })
}
