//! Bounded quoting of client input in messages: the bottom layer, used by every other one.

/// The longest status message sent to a client, in bytes. Longer messages are cut (with
/// "…") so that a default client's metadata limit is never what a caller runs into.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// How many characters of a client's input an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// Quotes a client's input for an error message: in full (Rust debug quoting) when it is
/// short, else its first [`QUOTE_CHARS`] characters, "…" and its length in bytes, so that a
/// huge input never comes back whole.
///
/// ```
/// assert_eq!(oprun::text::quote("abc"), r#""abc""#);
/// let long = "x".repeat(1_000_000);
/// assert!(oprun::text::quote(&long).ends_with("…(1000000 bytes)"));
/// ```
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &text[..cut], text.len()),
    }
}

/// `message` cut to at most `max` bytes (on a character boundary, ending with "…").
pub fn truncate_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let ellipsis = "…";
    let mut cut = max.saturating_sub(ellipsis.len());
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ellipsis}", &message[..cut])
}
