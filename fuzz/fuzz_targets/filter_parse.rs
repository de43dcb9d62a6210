//! Fuzzes the AIP-160 list filter parser: any input either parses or is refused with a
//! position inside the filter (never a panic), and a parsed filter can be evaluated against
//! any operation without panicking.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use oprun::filter::{Filter, FilterFields};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Filter::parse(&text) {
        Ok(filter) => {
            for fields in fixed_fields() {
                let _ = filter.matches(&fields);
            }
        }
        Err(err) => {
            // The position is 1-based and at most one past the last character.
            let chars = text.chars().count();
            assert!(
                (1..=chars + 1).contains(&err.position),
                "position {} outside 1..={} for {text:?}: {err}",
                err.position,
                chars + 1
            );
            assert!(!err.message.is_empty(), "empty message for {text:?}");
            let refused =
                oprun::Error::invalid_argument_because("filter", "INVALID_FILTER", err.to_string());
            assert!(matches!(refused, oprun::Error::InvalidArgument { .. }));
        }
    }
});

/// Operations in every state, with and without an error, at the epoch and far from it.
fn fixed_fields() -> [FilterFields<'static>; 4] {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_767_366_245);
    [
        FilterFields {
            name: "operations/3f2a9c",
            done: false,
            kind: "sleep",
            state: "RUNNING",
            error_code: None,
            create_time: t0,
            update_time: t0 + Duration::from_millis(1500),
        },
        FilterFields {
            name: "operations/0",
            done: true,
            kind: "snapshot",
            state: "CANCELLED",
            error_code: Some(1),
            create_time: UNIX_EPOCH,
            update_time: UNIX_EPOCH,
        },
        FilterFields {
            name: "",
            done: true,
            kind: "",
            state: "FAILED",
            error_code: Some(i32::MIN),
            create_time: UNIX_EPOCH - Duration::from_secs(1 << 40),
            update_time: t0,
        },
        FilterFields {
            name: "operations/*",
            done: true,
            kind: "*",
            state: "SUCCEEDED",
            error_code: None,
            create_time: t0 + Duration::from_secs(1 << 40),
            update_time: t0 + Duration::from_secs(1 << 40),
        },
    ]
}
