//! oprun library (skeleton, filled in below).
pub mod proto;
