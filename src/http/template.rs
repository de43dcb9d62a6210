//! Path templates of the HTTP mapping (`google.api.HttpRule`): parsing `/v1/{name=operations/**}:cancel`
//! and matching request paths against it.
//!
//! Grammar (from `google/api/http.proto`):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//! `*` matches one path segment, `**` one or more (here never zero: an empty resource id is
//! never valid), and a variable binds the text its segments matched to a request field.

use std::fmt;

/// One segment pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: one or more segments (only as the last pattern segment).
    Many,
}

/// A variable: the request field it binds and the pattern segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
    text: String,
}

/// Why a template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HTTP path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

/// The fields a path bound: (field path, decoded value), in template order.
pub type Bindings = Vec<(String, String)>;

impl PathTemplate {
    /// Parses a template such as `/v1/{name=operations/**}:cancel`.
    ///
    /// # Errors
    /// [`TemplateError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError {
            template: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| fail("it must start with /"))?;
        // The verb follows the last ':' that is outside any variable and after the last '/'.
        let (path, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(['/', '}']) => {
                (&rest[..i], Some(rest[i + 1..].to_owned()))
            }
            _ => (rest, None),
        };
        if verb.as_deref() == Some("") {
            return Err(fail("the verb after ':' is empty"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| fail("a '{' is not closed"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() || !field.split('.').all(is_identifier) {
                    return Err(fail("a variable does not name a field"));
                }
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(
                        parse_segment(part)
                            .ok_or_else(|| fail("a segment is empty or has a brace"))?,
                    );
                }
                variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                segments.push(
                    parse_segment(&chars[..end])
                        .ok_or_else(|| fail("a segment is empty or has a brace"))?,
                );
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(more) if !more.is_empty() => chars = more,
                Some(_) => return Err(fail("it ends with '/'")),
                None if chars.is_empty() => {}
                None => return Err(fail("a variable is not followed by '/' or the end")),
            }
        }
        if segments.is_empty() {
            return Err(fail("it has no segments"));
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::Many) {
            if i + 1 != segments.len() {
                return Err(fail("'**' may only be the last segment"));
            }
        }
        Ok(Self {
            segments,
            variables,
            verb,
            text: text.to_owned(),
        })
    }

    /// The verb (`cancel` in `...:cancel`), if any.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// The request fields the path binds.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// Matches a request path (without its query); `None` when it does not match, or when a
    /// segment does not percent-decode to UTF-8.
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        // How many path segments each pattern segment took.
        let mut taken = Vec::with_capacity(self.segments.len());
        let mut at = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(lit) => {
                    if parts.get(at).copied()? != lit {
                        return None;
                    }
                    taken.push(at..at + 1);
                    at += 1;
                }
                Segment::One => {
                    parts.get(at)?;
                    taken.push(at..at + 1);
                    at += 1;
                }
                Segment::Many => {
                    debug_assert_eq!(i + 1, self.segments.len());
                    if at >= parts.len() {
                        return None;
                    }
                    taken.push(at..parts.len());
                    at = parts.len();
                }
            }
        }
        if at != parts.len() {
            return None;
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let first = taken[var.start].start;
            let last = taken[var.end - 1].end;
            let mut value = String::new();
            for (n, part) in parts[first..last].iter().enumerate() {
                if n > 0 {
                    value.push('/');
                }
                value.push_str(&percent_decode(part)?);
            }
            bindings.push((var.field.clone(), value));
        }
        Some(bindings)
    }

    /// The template in OpenAPI's form: each variable becomes one `{param}` per `*`/`**`
    /// segment it spans, literals stay (`/v1/operations/{operation}:cancel`), with the name
    /// of each parameter and the prefix its value gets when the field is rebuilt.
    pub fn openapi(&self) -> (String, Vec<OpenApiParam>) {
        let mut path = String::new();
        let mut params = Vec::new();
        let mut i = 0;
        while i < self.segments.len() {
            path.push('/');
            let var = self.variables.iter().find(|v| v.start == i);
            match (&self.segments[i], var) {
                (Segment::Literal(lit), _) => {
                    path.push_str(lit);
                    i += 1;
                }
                (_, var) => {
                    // A wildcard's parameter is named after the literal before it, in the
                    // singular where it is an English plural (`operations/*` → `operation`).
                    let name = match i.checked_sub(1).map(|p| &self.segments[p]) {
                        Some(Segment::Literal(lit)) => singular(lit),
                        _ => {
                            var.map_or_else(|| format!("segment{i}"), |v| v.field.replace('.', "_"))
                        }
                    };
                    path.push('{');
                    path.push_str(&name);
                    path.push('}');
                    params.push(OpenApiParam {
                        name,
                        many: self.segments[i] == Segment::Many,
                    });
                    i += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, params)
    }
}

/// A path parameter of [`PathTemplate::openapi`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenApiParam {
    /// Its name in the OpenAPI path.
    pub name: String,
    /// Whether it stands for `**` (it may hold `/`).
    pub many: bool,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_segment(s: &str) -> Option<Segment> {
    match s {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Many),
        lit if lit.contains(['{', '}', ':']) => None,
        lit => Some(Segment::Literal(lit.to_owned())),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn singular(word: &str) -> String {
    word.strip_suffix('s').unwrap_or(word).to_owned()
}

/// Decodes `%XX` escapes; `None` for a malformed escape or text that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(t: &str, path: &str) -> Option<Bindings> {
        PathTemplate::parse(t)
            .expect("valid template")
            .matches(path)
    }

    fn one(field: &str, value: &str) -> Option<Bindings> {
        Some(vec![(field.to_owned(), value.to_owned())])
    }

    /// The standard Operations templates bind `name` as Google's clients send it.
    #[test]
    fn operations_templates_match() {
        assert_eq!(
            bound("/v1/{name=operations}", "/v1/operations"),
            one("name", "operations")
        );
        assert_eq!(
            bound("/v1/{name=operations/**}", "/v1/operations/abc"),
            one("name", "operations/abc")
        );
        assert_eq!(
            bound(
                "/v1/{name=operations/**}:cancel",
                "/v1/operations/abc:cancel"
            ),
            one("name", "operations/abc")
        );
        // Without the verb the segment keeps its colon (and the name is then not valid).
        assert_eq!(
            bound("/v1/{name=operations/**}", "/v1/operations/abc:cancel"),
            one("name", "operations/abc:cancel")
        );
        assert_eq!(
            bound("/v1/{name=operations/**}", "/v1/operations/a/b"),
            one("name", "operations/a/b")
        );
        assert_eq!(bound("/v1/{name=operations/*}", "/v1/operations/a/b"), None);
        assert_eq!(bound("/v1/{name=operations/**}", "/v1/operations"), None);
        assert_eq!(bound("/v1/{name=operations/**}", "/v1/operations/"), None);
        assert_eq!(bound("/v1/{name=operations}", "/v2/operations"), None);
        assert_eq!(bound("/v1/tasks:submit", "/v1/tasks:submit"), Some(vec![]));
        assert_eq!(bound("/v1/tasks:submit", "/v1/tasks"), None);
        assert_eq!(bound("/v1/{name}", "/v1/x%2Fy"), one("name", "x/y"));
        assert_eq!(bound("/v1/{name}", "/v1/%FF"), None);
        assert_eq!(bound("/v1/{name}", "/v1/%4"), None);
        assert_eq!(
            bound("/v1/{parent.name=projects/*}/x/{id}", "/v1/projects/p/x/7"),
            Some(vec![
                ("parent.name".to_owned(), "projects/p".to_owned()),
                ("id".to_owned(), "7".to_owned())
            ])
        );
    }

    /// Malformed templates are refused with a reason, never a panic.
    #[test]
    fn malformed_templates_are_refused() {
        for t in [
            "v1/x",
            "/",
            "/v1/",
            "/v1/{name",
            "/v1/{=x}",
            "/v1/{name}x",
            "/v1/**/x",
            "/v1/x:",
            "/v1//x",
            "/v1/{a b}",
        ] {
            assert!(PathTemplate::parse(t).is_err(), "{t} was accepted");
        }
    }

    /// OpenAPI paths name each wildcard after the collection before it.
    #[test]
    fn openapi_paths() {
        let t = PathTemplate::parse("/v1/{name=operations/**}:cancel").expect("valid");
        let (path, params) = t.openapi();
        assert_eq!(path, "/v1/operations/{operation}:cancel");
        assert_eq!(
            params,
            vec![OpenApiParam {
                name: "operation".into(),
                many: true
            }]
        );
        let (path, params) = PathTemplate::parse("/v1/{name=operations}")
            .expect("valid")
            .openapi();
        assert_eq!(path, "/v1/operations");
        assert!(params.is_empty());
    }
}
