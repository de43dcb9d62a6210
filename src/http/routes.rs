//! The REST routes: every `google.api.http` rule of the served RPCs (the primary one and its
//! additional bindings) as a [`Route`], checked against the messages it names.

use http::uri::PathAndQuery;
use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

use super::template::PathTemplate;

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template.
    pub template: PathTemplate,
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// `body`: `None` (no body), `"*"` (the whole request) or a request field.
    pub body: Option<String>,
    /// `response_body`: `None` (the whole response) or a response field.
    pub response_body: Option<String>,
    /// The gRPC path, made once.
    pub(super) path: PathAndQuery,
}

impl Route {
    /// The gRPC path (`/package.Service/Method`).
    pub fn grpc_path(&self) -> &str {
        self.path.as_str()
    }
}

/// Why the HTTP rules of a pool cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// A template does not parse.
    #[error("{rpc}: {source}")]
    Template {
        /// The RPC.
        rpc: String,
        /// What is wrong with it.
        #[source]
        source: super::template::TemplateError,
    },
    /// A rule names a body or response field the message does not have, or a path variable
    /// names a missing field.
    #[error("{rpc}: {what}")]
    Field {
        /// The RPC.
        rpc: String,
        /// What is missing.
        what: String,
    },
}

/// The HTTP bindings of every RPC of `services` in `pool` (the primary rule and its
/// `additional_bindings`), those with a verb first so that `.../x:cancel` never reaches a
/// template that would take `x:cancel` as an id.
///
/// # Errors
/// [`RulesError`] for a rule that cannot be served.
pub fn routes(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Route>, RulesError> {
    let mut routes = Vec::new();
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(routes);
    };
    for service in pool.services() {
        if !services.contains(&service.full_name()) {
            continue;
        }
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&http) {
                continue;
            }
            if let Value::Message(rule) = options.get_extension(&http).into_owned() {
                let mut bindings = vec![rule.clone()];
                if let Some(Value::List(more)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    bindings.extend(more.into_iter().filter_map(|v| match v {
                        Value::Message(m) => Some(m),
                        _ => None,
                    }));
                }
                for binding in bindings {
                    if let Some(route) = route_of(&rpc, &binding)? {
                        routes.push(route);
                    }
                }
            }
        }
    }
    routes.sort_by_key(|r| r.template.verb().is_none());
    Ok(routes)
}

fn string_field(message: &DynamicMessage, name: &str) -> Option<String> {
    match message.get_field_by_name(name)?.into_owned() {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn route_of(rpc: &MethodDescriptor, rule: &DynamicMessage) -> Result<Option<Route>, RulesError> {
    let fail = |what: String| RulesError::Field {
        rpc: rpc.full_name().to_owned(),
        what,
    };
    let pattern = [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ]
    .into_iter()
    .find_map(|(field, method)| string_field(rule, field).map(|p| (method, p)));
    let (method, path) = match pattern {
        Some(p) => p,
        None => match rule.get_field_by_name("custom").map(|v| v.into_owned()) {
            Some(Value::Message(custom)) => {
                match (string_field(&custom, "kind"), string_field(&custom, "path")) {
                    (Some(kind), Some(path)) => (
                        Method::from_bytes(kind.as_bytes()).map_err(|_| {
                            fail(format!("custom method {kind:?} is not an HTTP method"))
                        })?,
                        path,
                    ),
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        },
    };
    let template = PathTemplate::parse(&path).map_err(|source| RulesError::Template {
        rpc: rpc.full_name().to_owned(),
        source,
    })?;
    for field in template.fields() {
        if field_path(&rpc.input(), field).is_none() {
            return Err(fail(format!(
                "the path binds {field:?}, which the request lacks"
            )));
        }
    }
    let body = string_field(rule, "body");
    if let Some(b) = body.as_deref().filter(|b| *b != "*") {
        if rpc.input().get_field_by_name(b).is_none() {
            return Err(fail(format!("the body field {b:?} is not in the request")));
        }
    }
    let response_body = string_field(rule, "response_body");
    if let Some(b) = &response_body {
        if rpc.output().get_field_by_name(b).is_none() {
            return Err(fail(format!(
                "the response_body field {b:?} is not in the response"
            )));
        }
    }
    let path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
    let path = PathAndQuery::try_from(path)
        .map_err(|_| fail("its name does not make a gRPC path".to_owned()))?;
    Ok(Some(Route {
        method,
        template,
        rpc: rpc.clone(),
        body,
        response_body,
        path,
    }))
}

/// The fields along a dotted path (`parent.name`), by proto or JSON name.
pub(super) fn field_path(desc: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut fields = Vec::new();
    let mut current = desc.clone();
    for (i, part) in path.split('.').enumerate() {
        if i > 0 {
            let Kind::Message(next) = fields.last().map(FieldDescriptor::kind)? else {
                return None;
            };
            current = next;
        }
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))?;
        fields.push(field);
    }
    Some(fields)
}
