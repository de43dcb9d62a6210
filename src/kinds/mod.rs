//! Kinds built into the library, and the registry that holds them. This module depends on
//! the task API ([`crate::task`]), never the reverse.

pub mod sleep;

use crate::task::Registry;

impl Registry {
    /// A registry holding the built-in kinds (`sleep`).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        if let Err(e) = registry.register(sleep::Sleep) {
            // An empty registry has every name free.
            unreachable!("{e}");
        }
        registry
    }
}
