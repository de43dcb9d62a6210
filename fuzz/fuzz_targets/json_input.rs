//! Fuzzes the JSON input path of SubmitTask/the CLI: any text either parses as the kind's
//! input message or is refused (never a panic), and a parsed input renders back to JSON that
//! parses again to the same message.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oprun::json::JsonCodec;

static CODEC: LazyLock<JsonCodec> =
    LazyLock::new(|| JsonCodec::new().expect("the embedded descriptor set loads"));

const TYPES: [&str; 2] = ["oprun.v1.SleepInput", "oprun.v1.CreateSnapshotRequest"];

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    for type_name in TYPES {
        let Ok(any) = CODEC.any_from_json(type_name, json) else {
            continue;
        };
        let rendered = CODEC
            .to_json(type_name, &any.value)
            .unwrap_or_else(|e| panic!("{json:?} parsed as {type_name} but does not render: {e}"));
        let again = CODEC
            .any_from_json(type_name, &rendered)
            .unwrap_or_else(|e| panic!("rendered {rendered:?} does not parse again: {e}"));
        assert_eq!(any, again, "{json:?} -> {rendered:?} changed the message");
    }
});
