//! Opaque page tokens (AIP-158), bound to the filter they were issued for.
//!
//! A token is base64url of: version (1 byte), the `seq` of the last operation returned
//! (8 bytes, big-endian), and the first 8 bytes of the SHA-256 of the filter text.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::Error;

const VERSION: u8 = 1;
const LEN: usize = 17;

fn filter_hash(filter: &str) -> [u8; 8] {
    let digest = Sha256::digest(filter.trim().as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// A token that continues after `seq` for `filter`.
pub fn encode(seq: i64, filter: &str) -> String {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&filter_hash(filter));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `seq` to continue after; 0 for an empty token.
///
/// # Errors
/// INVALID_ARGUMENT when the token was not issued by this server or was issued for another
/// filter.
pub fn decode(token: &str, filter: &str) -> Result<i64, Error> {
    if token.is_empty() {
        return Ok(0);
    }
    let invalid = || {
        Error::invalid_argument_because(
            "page_token",
            "INVALID_PAGE_TOKEN",
            "page_token is not one this server issued; pass the next_page_token of the previous \
             response unchanged, or none to start over",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return Err(invalid());
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[1..9]);
    if bytes[9..] != filter_hash(filter) {
        return Err(Error::invalid_argument_because(
            "page_token",
            "PAGE_TOKEN_FILTER_MISMATCH",
            "page_token was issued for a different filter; repeat the filter of the first \
             request, or start over without a page_token",
        ));
    }
    let seq = i64::from_be_bytes(seq);
    if seq < 0 {
        return Err(invalid());
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token round-trips for its own filter only.
    #[test]
    fn round_trip_and_filter_binding() {
        let t = encode(42, "done = true");
        assert_eq!(decode(&t, "done = true").unwrap(), 42);
        assert_eq!(decode(&t, "  done = true ").unwrap(), 42);
        let err = decode(&t, "done = false").unwrap_err();
        assert!(err.to_string().contains("different filter"), "{err}");
        assert_eq!(decode("", "x").unwrap(), 0);
    }

    /// Garbage never panics and is INVALID_ARGUMENT.
    #[test]
    fn garbage_is_rejected() {
        for bad in ["x", "!!!", "AAAA", &"A".repeat(1000), "AQAAAAAAAAAq"] {
            let err = decode(bad, "").unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{bad}: {err}");
        }
    }
}
