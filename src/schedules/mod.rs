//! Schedules: operations started on a calendar (a cron spec in a time zone) or at an
//! interval, by every node of a store, each fire time at most once over the cluster.
//!
//! # Layout
//! - `cron`: cron specs, parsed with errors naming the field at fault.
//! - `calendar`: fire times: a cron spec in an IANA time zone (with its DST rules) or an
//!   interval from an anchor.
//! - `stored`: a schedule as the store keeps it (its wire form and the fire decided but not
//!   started), and how a client's schedule is checked.
//! - `plan`: what a node does with a schedule whose wake time came (pure): decide the due
//!   fire by the overlap policy and the catch-up window, or release a buffered one.
//!
//! The runner's side (the fire loop, and the calls of `oprun.v1.ScheduleService`) is in
//! `crate::scheduler`'s `schedules`: a fire is first decided (written, fenced by the
//! schedule's version, as a pending fire), then submitted with a request id derived from the
//! schedule and the fire time, then recorded (pending cleared). Whichever node or restart
//! finds the pending fire submits it again, and the request id makes that the same
//! operation: exactly one operation per fire time.

pub mod calendar;
pub mod cron;
pub(crate) mod plan;
pub mod stored;

use std::time::Duration;

use crate::error::Error;

/// The prefix of every schedule's name.
pub const NAME_PREFIX: &str = "schedules/";

/// The longest schedule id.
pub const MAX_ID_LEN: usize = 63;

/// How many of its latest runs a schedule shows.
pub const MAX_RECENT_RUNS: usize = 10;

/// The catch-up window of a schedule that sets none.
pub const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(60);

/// The longest catch-up window.
pub const MAX_CATCHUP_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// A fire whose time passed less than this ago is on time, whatever the catch-up window: a
/// node busy for a moment has not missed it.
pub const FIRE_GRACE: Duration = Duration::from_secs(5);

/// The shortest interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest interval (a cron spec says what longer periods mean: `@yearly`).
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest note.
pub const MAX_NOTE_LEN: usize = 1024;

/// Checks a schedule id: lowercase letters, digits and hyphens, starting with a letter, at
/// most [`MAX_ID_LEN`] characters (AIP-122).
///
/// # Errors
/// INVALID_ARGUMENT naming `field`.
pub fn check_id(field: &'static str, id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.ends_with('-');
    if valid {
        return Ok(());
    }
    Err(Error::invalid_argument(
        field,
        format!(
            "schedule id {} is not valid: use lowercase letters, digits and hyphens, starting \
             with a letter and not ending with a hyphen, at most {MAX_ID_LEN} characters \
             (e.g. nightly-export)",
            crate::text::quote(id)
        ),
    ))
}

/// The id in a schedule's name (`schedules/{id}`).
///
/// # Errors
/// INVALID_ARGUMENT naming `field` when it is not such a name.
pub fn id_of(field: &'static str, name: &str) -> Result<String, Error> {
    let Some(id) = name.strip_prefix(NAME_PREFIX) else {
        return Err(Error::invalid_argument(
            field,
            format!(
                "{field} {} is not a schedule name; it looks like schedules/nightly-export",
                crate::text::quote(name)
            ),
        ));
    };
    check_id(field, id)?;
    Ok(id.to_owned())
}

/// A new schedule id, for a creation that names none: `s` and 12 hex digits.
pub fn generate_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("s{}", &uuid[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_aip_122() {
        for good in ["a", "nightly-export", "db2-backup", &"a".repeat(63)] {
            assert!(check_id("schedule_id", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1a",
            "Nightly",
            "a_b",
            "a-",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            let err = check_id("schedule_id", bad).unwrap_err();
            assert!(
                err.to_string().contains("lowercase letters"),
                "{bad}: {err}"
            );
        }
        assert_eq!(id_of("name", "schedules/x").unwrap(), "x");
        let err = id_of("name", "operations/x").unwrap_err();
        assert!(err.to_string().contains("not a schedule name"), "{err}");
        assert!(check_id("schedule_id", &generate_id()).is_ok());
    }
}
