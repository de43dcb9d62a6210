//! A fenced write in SQL: what [`Fence::admits`](crate::model::Fence::admits) and
//! [`Fence::written`](crate::model::Fence::written) say of a stored record, said once for both
//! SQL backends. A backend binds, for each write: the version its writer read (`expected`,
//! NULL under an owner's fence), the owner's node and attempt (under a version's fence they
//! are not read), and the record's new version and cancel request.

use crate::store::row::RUNNING;

/// How one statement names what a fenced write compares and sets.
pub(crate) struct FenceSql<'a> {
    /// The prefix of the stored row's columns (`"o."`, or `""` where they need none).
    pub(crate) row: &'a str,
    /// The version the writer read; NULL for an owner's fence.
    pub(crate) expected: &'a str,
    /// The owner's node.
    pub(crate) owner: &'a str,
    /// The owner's attempt.
    pub(crate) attempt: &'a str,
    /// The record's new version (what a version's fence writes).
    pub(crate) version: &'a str,
    /// The record's cancel request.
    pub(crate) cancel: &'a str,
}

impl FenceSql<'_> {
    /// The condition the stored row meets for the write to be taken: at the version read, or
    /// RUNNING the owner's attempt.
    pub(crate) fn admits(&self) -> String {
        let Self {
            row: r,
            expected: e,
            owner: o,
            attempt: a,
            ..
        } = self;
        format!(
            "CASE WHEN {e} IS NULL THEN {r}state = {RUNNING} AND {r}owner = {o} \
             AND {r}attempt = {a} ELSE {r}version = {e} END"
        )
    }

    /// The assignments of `version` and `cancel_requested`: the record's own under a
    /// version's fence; under an owner's, one past the stored version, and a cancel request
    /// written meanwhile kept.
    pub(crate) fn written(&self) -> String {
        let Self {
            row: r,
            expected: e,
            version: v,
            cancel: c,
            ..
        } = self;
        format!(
            "version = CASE WHEN {e} IS NULL THEN {r}version + 1 ELSE {v} END, \
             cancel_requested = CASE WHEN {e} IS NULL THEN {r}cancel_requested OR {c} \
             ELSE {c} END"
        )
    }
}
