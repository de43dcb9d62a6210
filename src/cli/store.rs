//! `oprun store check`: the operator's look at a data directory's store.

use std::path::Path;

use super::{CliResult, Failure};
use crate::store::sqlite::check;

/// Checks the store in `dir` thoroughly and prints what is damaged; fails (exit code 1) when
/// anything is.
pub(super) fn check(dir: &Path) -> CliResult {
    let report = check::run(dir).map_err(|e| Failure::from(e.to_string()))?;
    if report.is_sound() {
        println!(
            "{}: sound ({} operations, every page and index checked)",
            report.path.display(),
            report.readable
        );
        return Ok(());
    }
    println!("{}: DAMAGED", report.path.display());
    for problem in &report.problems {
        println!("  {problem}");
    }
    println!(
        "{} operations could be read whole. Stop oprun before repairing; restore the file from \
         a backup, or move it aside to start with an empty store.",
        report.readable
    );
    Err(Failure::from(format!(
        "{} is damaged ({} problems)",
        report.path.display(),
        report.problems.len()
    )))
}
