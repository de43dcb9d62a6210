//! The filter's tokens: quoted and bare values, operators, parentheses and keywords, each
//! with its 1-based character position for errors.

use super::*;

/// A lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    LParen,
    RParen,
    /// `-` at the start of a term: negation.
    Minus,
    Op(Op),
    /// A bare word: a field name, a keyword or an unquoted value.
    Word(String),
    /// A quoted string, unescaped.
    Str(String),
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::LParen => "\"(\"".to_owned(),
            Tok::RParen => "\")\"".to_owned(),
            Tok::Minus => "\"-\"".to_owned(),
            Tok::Op(op) => format!("\"{}\"", op.symbol()),
            Tok::Word(word) => format!("\"{}\"", escape(word)),
            Tok::Str(text) => format!("quoted string \"{}\"", escape(text)),
            Tok::End => "end of filter".to_owned(),
        }
    }

    pub(super) fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Tok::Word(word) if word == keyword)
    }
}

/// A token and the 1-based character position where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) pos: usize,
}

/// Escapes `"` and `\` for quoting a value in an error message.
/// `text` with `"` and `\\` escaped, for quoting in an error message; long text is cut to its
/// first [`crate::text::QUOTE_CHARS`] characters, "…" and its length in bytes.
pub(super) fn escape(text: &str) -> String {
    let shown = match text.char_indices().nth(crate::text::QUOTE_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    if shown.len() < text.len() {
        out.push_str(&format!("…({} bytes)", text.len()));
    }
    out
}

/// Splits the filter into tokens. Which characters end a bare word depends on
/// whether a term (field name, keyword, parenthesis) or a value is expected, so the
/// parser asks for one or the other.
pub(super) struct Lexer {
    pub(super) chars: Vec<char>,
    /// The index of the next unread character.
    pub(super) at: usize,
}

impl Lexer {
    pub(super) fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    pub(super) fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Reads the next token where a term or a combinator is expected.
    pub(super) fn term_token(&mut self) -> Result<Token, FilterError> {
        self.skip_whitespace();
        let pos = self.at + 1;
        let tok = match self.peek() {
            None => Tok::End,
            Some('-') => {
                self.at += 1;
                Tok::Minus
            }
            Some(quote @ ('"' | '\'')) => Tok::Str(self.string(quote)?),
            Some(c) if is_symbol(c) => self.symbol()?,
            Some(_) => Tok::Word(self.word(|c| is_symbol(c) || c == '"' || c == '\'')),
        };
        Ok(Token { tok, pos })
    }

    /// Reads the next token where a value is expected. A bare value may hold `:`,
    /// `-`, `+`, `.`, `/` and `*`, as timestamps, negative numbers, names and
    /// wildcards need.
    pub(super) fn value_token(&mut self) -> Result<Token, FilterError> {
        self.skip_whitespace();
        let pos = self.at + 1;
        let tok = match self.peek() {
            None => Tok::End,
            Some(quote @ ('"' | '\'')) => Tok::Str(self.string(quote)?),
            Some(c) if is_symbol(c) && c != ':' => self.symbol()?,
            Some(_) => {
                Tok::Word(self.word(|c| (is_symbol(c) && c != ':') || c == '"' || c == '\''))
            }
        };
        Ok(Token { tok, pos })
    }

    /// Reads a bare word, up to whitespace or a character for which `stop` holds.
    pub(super) fn word(&mut self, stop: impl Fn(char) -> bool) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || stop(c) {
                break;
            }
            word.push(c);
            self.at += 1;
        }
        word
    }

    /// Reads a parenthesis or an operator.
    pub(super) fn symbol(&mut self) -> Result<Tok, FilterError> {
        let pos = self.at + 1;
        let first = self.peek();
        self.at += 1;
        let followed_by_eq = self.peek() == Some('=');
        let tok = match first {
            Some('(') => Tok::LParen,
            Some(')') => Tok::RParen,
            Some('=') => Tok::Op(Op::Eq),
            Some(':') => Tok::Op(Op::Has),
            Some('<') if followed_by_eq => Tok::Op(Op::Le),
            Some('<') => Tok::Op(Op::Lt),
            Some('>') if followed_by_eq => Tok::Op(Op::Ge),
            Some('>') => Tok::Op(Op::Gt),
            Some('!') if followed_by_eq => Tok::Op(Op::Ne),
            Some('!') => {
                return Err(FilterError::new(
                    pos,
                    "unexpected \"!\"; use \"!=\" for not-equal, or NOT or \"-\" to negate",
                ))
            }
            _ => {
                return Err(FilterError::new(pos, "unexpected character"));
            }
        };
        if matches!(tok, Tok::Op(Op::Le | Op::Ge | Op::Ne)) {
            self.at += 1;
        }
        Ok(tok)
    }

    /// Reads a string quoted with `quote`, resolving the escapes `\"`, `\'` and `\\`.
    pub(super) fn string(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.at + 1;
        self.at += 1;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(FilterError::new(
                    start,
                    format!("unterminated string; close it with {quote}"),
                ));
            };
            self.at += 1;
            if c == quote {
                return Ok(text);
            }
            if c != '\\' {
                text.push(c);
                continue;
            }
            match self.peek() {
                Some(escaped @ ('"' | '\'' | '\\')) => {
                    text.push(escaped);
                    self.at += 1;
                }
                Some(other) => {
                    return Err(FilterError::new(
                        self.at,
                        format!(
                            "invalid escape \"\\{other}\" in string; only \\\", \\' and \\\\ \
                             are allowed"
                        ),
                    ))
                }
                None => {
                    return Err(FilterError::new(
                        start,
                        format!("unterminated string; close it with {quote}"),
                    ))
                }
            }
        }
    }
}

/// Whether `c` is a parenthesis or starts an operator.
pub(super) fn is_symbol(c: char) -> bool {
    matches!(c, '(' | ')' | '=' | '!' | '<' | '>' | ':')
}
