//! The parser: tokens into a typed [`Expr`](super::expr::Expr), each value checked against
//! its field's type (so a misspelt state is an error, not a filter that matches nothing).

use super::*;

/// A value as written in the filter.
pub(super) struct Value {
    pub(super) text: String,
    pub(super) pos: usize,
}

impl Value {
    pub(super) fn is_star(&self) -> bool {
        self.text == "*"
    }

    pub(super) fn quoted(&self) -> String {
        format!("\"{}\"", escape(&self.text))
    }
}

/// A recursive-descent parser for the AIP-160 grammar:
///
/// ```text
/// expression  = sequence { "AND" sequence }
/// sequence    = factor { factor }
/// factor      = term { "OR" term }
/// term        = [ "NOT" | "-" ] simple
/// simple      = restriction | "(" expression ")"
/// restriction = field operator value
/// ```
pub(super) struct Parser {
    pub(super) lexer: Lexer,
    /// How many parentheses are open.
    pub(super) depth: usize,
    /// The last token read, as it reads in an error message.
    pub(super) last: String,
}

impl Parser {
    pub(super) fn next_term(&mut self) -> Result<Token, FilterError> {
        let token = self.lexer.term_token()?;
        self.last = token.tok.describe();
        Ok(token)
    }

    pub(super) fn peek_term(&mut self) -> Result<Tok, FilterError> {
        let at = self.lexer.at;
        let token = self.lexer.term_token();
        self.lexer.at = at;
        Ok(token?.tok)
    }

    pub(super) fn expression(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.sequence()?];
        while self.peek_term()?.is_keyword("AND") {
            self.next_term()?;
            parts.push(self.sequence()?);
        }
        Ok(Expr::all(parts))
    }

    pub(super) fn sequence(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.factor()?];
        loop {
            let next = self.peek_term()?;
            if matches!(next, Tok::End | Tok::RParen) || next.is_keyword("AND") {
                break;
            }
            parts.push(self.factor()?);
        }
        Ok(Expr::all(parts))
    }

    pub(super) fn factor(&mut self) -> Result<Expr, FilterError> {
        let mut parts = vec![self.term()?];
        while self.peek_term()?.is_keyword("OR") {
            self.next_term()?;
            parts.push(self.term()?);
        }
        Ok(Expr::any(parts))
    }

    pub(super) fn term(&mut self) -> Result<Expr, FilterError> {
        let next = self.peek_term()?;
        if next == Tok::Minus || next.is_keyword("NOT") {
            self.next_term()?;
            let negated = self.simple()?;
            return Ok(Expr::Not(Box::new(negated)));
        }
        self.simple()
    }

    pub(super) fn simple(&mut self) -> Result<Expr, FilterError> {
        let after = std::mem::take(&mut self.last);
        let token = self.next_term()?;
        match token.tok {
            Tok::LParen => {
                if self.depth >= MAX_DEPTH {
                    return Err(FilterError::new(
                        token.pos,
                        format!(
                            "parentheses are nested too deeply; at most {MAX_DEPTH} levels \
                             are allowed"
                        ),
                    ));
                }
                self.depth += 1;
                let inner = self.expression()?;
                self.depth -= 1;
                let close = self.next_term()?;
                match close.tok {
                    Tok::RParen => Ok(inner),
                    Tok::End => Err(FilterError::new(
                        close.pos,
                        format!(
                            "missing \")\" to close the \"(\" at character {}",
                            token.pos
                        ),
                    )),
                    other => Err(FilterError::new(
                        close.pos,
                        format!("unexpected {}; expected \")\"", other.describe()),
                    )),
                }
            }
            Tok::Word(word) if !matches!(word.as_str(), "AND" | "OR" | "NOT") => {
                self.restriction(word, token.pos)
            }
            Tok::RParen => Err(FilterError::new(token.pos, "unexpected \")\"")),
            Tok::End if after.is_empty() => Err(FilterError::new(
                token.pos,
                "expected a comparison such as kind=\"sleep\"",
            )),
            Tok::End => Err(FilterError::new(
                token.pos,
                format!("expected a comparison after {after}"),
            )),
            Tok::Str(_) => Err(FilterError::new(
                token.pos,
                format!(
                    "unexpected {}; a comparison starts with a field name, e.g. kind=\"sleep\"",
                    token.tok.describe()
                ),
            )),
            other => Err(FilterError::new(
                token.pos,
                format!(
                    "unexpected {}; expected a comparison such as kind=\"sleep\"",
                    other.describe()
                ),
            )),
        }
    }

    pub(super) fn restriction(&mut self, word: String, pos: usize) -> Result<Expr, FilterError> {
        let Some(field) = Field::resolve(&word) else {
            let mut message = format!(
                "unknown field \"{}\"; filterable fields are: {FIELD_LIST}",
                escape(&word)
            );
            if ["and", "or", "not"].contains(&word.to_ascii_lowercase().as_str()) {
                message.push_str("; the keywords AND, OR and NOT must be upper-case");
            }
            return Err(FilterError::new(pos, message));
        };
        let op_token = self.next_term()?;
        let op = match op_token.tok {
            Tok::Op(op) => op,
            other => {
                return Err(FilterError::new(
                    op_token.pos,
                    format!(
                        "expected an operator such as = or : after \"{word}\", found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let value_token = self.lexer.value_token()?;
        let missing = || format!("expected a value after \"{}\"", op.symbol());
        let value = match value_token.tok {
            Tok::Word(text) if matches!(text.as_str(), "AND" | "OR" | "NOT") => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!(
                        "{}, found the keyword {text}; quote it to compare with the word",
                        missing()
                    ),
                ))
            }
            Tok::Word(text) | Tok::Str(text) => Value {
                text,
                pos: value_token.pos,
            },
            Tok::LParen => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!(
                        "{}; lists of values are not supported, write \
                         (kind=\"a\" OR kind=\"b\") instead",
                        missing()
                    ),
                ))
            }
            Tok::End => return Err(FilterError::new(value_token.pos, missing())),
            other => {
                return Err(FilterError::new(
                    value_token.pos,
                    format!("{}, found {}", missing(), other.describe()),
                ))
            }
        };
        self.last = value.quoted();
        let test = typed_test(field, op, op_token.pos, &value)?;
        Ok(Expr::Test(test))
    }
}

/// Checks `op` and `value` against the type of `field` and builds the test.
pub(super) fn typed_test(
    field: Field,
    op: Op,
    op_pos: usize,
    value: &Value,
) -> Result<Test, FilterError> {
    let operator_error = || {
        FilterError::new(
            op_pos,
            format!("\"{}\" does not apply to {}", op.symbol(), field.describe()),
        )
    };
    if op == Op::Has && value.is_star() {
        return Ok(match field {
            Field::ErrorCode | Field::Error => Test::HasError,
            _ => Test::Always,
        });
    }
    let negate = op == Op::Ne;
    match field {
        Field::Name | Field::Kind | Field::Schedule if !op.is_equality() => Err(operator_error()),
        Field::Schedule => {
            // A bare id means the schedule of that id; the empty value, no schedule.
            let mut pattern = Pattern::new(&value.text);
            if !pattern.any_prefix
                && !pattern.text.is_empty()
                && !pattern.text.starts_with(SCHEDULE_PREFIX)
            {
                pattern.text.insert_str(0, SCHEDULE_PREFIX);
            }
            Ok(Test::Schedule { negate, pattern })
        }
        Field::Name => {
            let pattern = Pattern::new(&value.text);
            Ok(Test::Name {
                negate,
                bare: !pattern.text.starts_with(NAME_PREFIX),
                pattern,
            })
        }
        Field::Kind => Ok(Test::Kind {
            negate,
            pattern: Pattern::new(&value.text),
        }),
        Field::Done if !op.is_equality() => Err(operator_error()),
        Field::Done => {
            let wanted = match value.text.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(FilterError::new(
                        value.pos,
                        format!(
                            "invalid boolean {}: done accepts true or false",
                            value.quoted()
                        ),
                    ))
                }
            };
            Ok(Test::Done {
                negate,
                value: wanted,
            })
        }
        Field::State if !op.is_equality() => Err(operator_error()),
        Field::State => match state_names().find(|state| *state == value.text) {
            Some(state) => Ok(Test::State {
                negate,
                value: state,
            }),
            None => Err(FilterError::new(
                value.pos,
                format!(
                    "invalid state {}: state accepts {}",
                    value.quoted(),
                    state_names().collect::<Vec<_>>().join(", ")
                ),
            )),
        },
        Field::ErrorCode => Ok(Test::ErrorCode {
            op,
            value: error_code(value)?,
        }),
        Field::Error => Err(FilterError::new(
            op_pos,
            "error supports only the presence test error:*; to compare codes use error.code",
        )),
        Field::CreateTime => Ok(Test::CreateTime {
            op,
            value: timestamp(value)?,
        }),
        Field::UpdateTime => Ok(Test::UpdateTime {
            op,
            value: timestamp(value)?,
        }),
        Field::Priority => match value.text.parse::<i32>() {
            Ok(n) => Ok(Test::Priority { op, value: n }),
            Err(_) => Err(FilterError::new(
                value.pos,
                format!(
                    "invalid priority {}: priority accepts an integer such as 10 or -5",
                    value.quoted()
                ),
            )),
        },
    }
}

/// Reads a `google.rpc.Code` given as a number or a name.
pub(super) fn error_code(value: &Value) -> Result<i32, FilterError> {
    if let Ok(number) = value.text.parse::<i32>() {
        if (0..=16).contains(&number) {
            return Ok(number);
        }
    } else if let Some(code) = crate::proto::google::rpc::Code::from_str_name(&value.text) {
        return Ok(code as i32);
    }
    Err(FilterError::new(
        value.pos,
        format!(
            "invalid error code {}: error.code accepts a number from 0 to 16 or a \
             google.rpc.Code name such as NOT_FOUND",
            value.quoted()
        ),
    ))
}

/// Reads an RFC 3339 timestamp.
pub(super) fn timestamp(value: &Value) -> Result<SystemTime, FilterError> {
    let invalid = || {
        FilterError::new(
            value.pos,
            format!(
                "invalid timestamp {}: expected RFC 3339, e.g. \"2026-01-02T15:04:05Z\"",
                value.quoted()
            ),
        )
    };
    let parsed = prost_types::Timestamp::from_str(&value.text).map_err(|_| invalid())?;
    SystemTime::try_from(parsed).map_err(|_| {
        FilterError::new(
            value.pos,
            format!("timestamp {} is out of range", value.quoted()),
        )
    })
}
