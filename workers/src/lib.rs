//! oprun's task kinds that live outside the library, written against its public API only,
//! the same way any user writes a kind.
#![deny(missing_docs)]

pub mod snapshot;

use oprun::cli::{RegisterFailure, ServeArgs};
use oprun::Registry;

/// Registers this crate's kinds for `oprun serve`.
///
/// # Errors
/// Why a kind cannot be set up (e.g. the snapshot root cannot be created).
pub fn register(registry: &mut Registry, args: &ServeArgs) -> Result<(), RegisterFailure> {
    registry.register(snapshot::SnapshotTask::new(&args.snapshot_root())?)?;
    Ok(())
}
