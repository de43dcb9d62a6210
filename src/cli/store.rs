//! `oprun store check` (the operator's look at a data directory's store) and `oprun migrate`
//! (a PostgreSQL store's schema).

use std::path::Path;

use super::serve::{parse_store, StoreKind};
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

/// Brings the schema of the PostgreSQL store at `store` up to date and says what it did.
pub(super) async fn migrate(store: &str) -> CliResult {
    let url = match parse_store(store).map_err(|e| Failure::from(format!("--store: {e}")))? {
        StoreKind::Postgres(url) => url,
        StoreKind::Sqlite | StoreKind::Memory => {
            return Err(Failure::from(
                "--store: `oprun migrate` is for a PostgreSQL store (postgres://USER@HOST:PORT/DB); \
                 the embedded store brings its schema up to date itself when `oprun serve` opens it"
                    .to_owned(),
            ))
        }
    };
    #[cfg(feature = "postgres")]
    {
        let migrated = crate::store::postgres::migrate(&url, None)
            .await
            .map_err(|e| Failure::from(format!("cannot migrate the PostgreSQL store: {e}")))?;
        if migrated.from == migrated.to {
            println!("schema version {}: up to date", migrated.to);
        } else {
            println!("schema version {} (was {})", migrated.to, migrated.from);
        }
        Ok(())
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = url;
        Err(Failure::from(super::serve::WITHOUT_POSTGRES.to_owned()))
    }
}
