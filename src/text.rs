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

/// `message` with the client's input it may echo bounded, whoever wrote it (a library's
/// error quoting a field name or a value it refused): each run between backticks, double
/// quotes or single quotes (one that opens a word, not an apostrophe inside one) longer than
/// [`QUOTE_CHARS`] characters keeps its first [`QUOTE_CHARS`], then "…(N bytes)", and the
/// whole is cut to [`MAX_STATUS_MESSAGE`] bytes.
///
/// ```
/// let long = "x".repeat(500_000);
/// let bounded = oprun::text::bound_echo(&format!("unknown field `{long}`, expected `a`"));
/// assert!(bounded.len() < 1024);
/// assert!(bounded.contains("…(500000 bytes)"));
/// assert!(bounded.ends_with(", expected `a`"));
/// ```
pub fn bound_echo(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_STATUS_MESSAGE));
    let mut rest = message;
    while out.len() <= MAX_STATUS_MESSAGE {
        let Some(open) = opening_quote(rest) else {
            break;
        };
        let delimiter = rest[open..].chars().next().unwrap_or('"');
        out.push_str(&rest[..open + delimiter.len_utf8()]);
        let inside = &rest[open + delimiter.len_utf8()..];
        // The closing delimiter (a double quote escaped with a backslash does not close).
        let mut close = None;
        let mut escaped = false;
        for (i, c) in inside.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' && delimiter == '"' {
                escaped = true;
            } else if c == delimiter {
                close = Some(i);
                break;
            }
        }
        let (quoted, after) = match close {
            Some(i) => (&inside[..i], &inside[i + delimiter.len_utf8()..]),
            None => (inside, ""),
        };
        let cut = quoted.char_indices().nth(QUOTE_CHARS).map(|(cut, _)| cut);
        out.push_str(&quoted[..cut.unwrap_or(quoted.len())]);
        if close.is_some() {
            out.push(delimiter);
        }
        if cut.is_some() {
            out.push_str(&format!("…({} bytes)", quoted.len()));
        }
        rest = after;
    }
    out.push_str(rest);
    truncate_message(&out, MAX_STATUS_MESSAGE)
}

/// Where the next quoted run of `text` opens: a backtick or double quote, or a single quote
/// that does not follow a letter or digit (so "kind's" opens nothing).
fn opening_quote(text: &str) -> Option<usize> {
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        match c {
            '`' | '"' => return Some(i),
            '\'' if !previous.is_some_and(char::is_alphanumeric) => return Some(i),
            _ => {}
        }
        previous = Some(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short quotes stay whole; long ones are cut, whichever delimiter; unclosed runs too.
    #[test]
    fn bound_echo_cuts_long_quoted_runs() {
        assert_eq!(bound_echo("plain `a` and \"b\""), "plain `a` and \"b\"");
        let long = "y".repeat(100);
        let cut = bound_echo(&format!("bad \"{long}\" here"));
        assert_eq!(cut, format!("bad \"{}\"…(100 bytes) here", "y".repeat(64)));
        let escaped = bound_echo(r#"value "a\"b" ok"#);
        assert_eq!(escaped, r#"value "a\"b" ok"#);
        let unclosed = bound_echo(&format!("x `{long}"));
        assert_eq!(unclosed, format!("x `{}…(100 bytes)", "y".repeat(64)));
        let huge = format!("{} end", "z".repeat(5000));
        assert!(bound_echo(&huge).len() <= MAX_STATUS_MESSAGE);
        let single = bound_echo(&format!(
            "unrecognized field name '{long}'; the kind's input"
        ));
        assert_eq!(
            single,
            format!(
                "unrecognized field name '{}'…(100 bytes); the kind's input",
                "y".repeat(64)
            )
        );
    }
}
