//! Fuzzes the page-token decoder: the input is split at its first newline into a token and a
//! filter. Decoding never panics; a refusal is INVALID_ARGUMENT; an accepted token gives a
//! non-negative position that a token issued by the server for the same filter reproduces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oprun::page_token;

fuzz_target!(|data: &[u8]| {
    let (token, filter) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let token = String::from_utf8_lossy(token);
    let filter = String::from_utf8_lossy(filter);
    match page_token::decode(&token, &filter) {
        Ok(seq) => {
            assert!(seq >= 0, "negative position {seq} from {token:?}");
            let reissued = page_token::encode(seq, &filter);
            assert_eq!(page_token::decode(&reissued, &filter).ok(), Some(seq));
        }
        Err(err) => assert!(
            matches!(err, oprun::Error::InvalidArgument { .. }),
            "{token:?} with filter {filter:?} refused as {err:?}"
        ),
    }
});
