//! Kinds built into the library.

pub mod sleep;
