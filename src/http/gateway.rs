//! The REST/JSON gateway: every RPC that carries a `google.api.http` rule, routed from the rules
//! in a descriptor pool and served by calling the gRPC service in process.
//!
//! A request is matched against the rules' path templates (those with a verb first), turned into
//! the RPC's request message from the path's variables, the query string and the JSON body
//! (proto3 JSON through prost-reflect), and sent through the same tower stack a gRPC client
//! reaches (auth included), as a gRPC call with no network in between. The reply comes back as
//! proto3 JSON; an error as Google's JSON error. A server-streaming RPC answers with
//! server-sent events, one `data:` line of JSON per message.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};
use serde_json::Map;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;

use super::codec::DynamicCodec;
use super::error::{error_response, gateway_status};
use super::request_json::{invalid, query_pairs, query_value, set_path};
use super::routes::field_path;
pub use super::routes::{routes, Route, RulesError};
use super::template::percent_decode;
use crate::text::quote;

/// A gRPC service stack as the gateway calls it: requests in, responses out, never failing
/// at the transport level (errors are gRPC statuses).
pub type GrpcService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Request headers passed on to the gRPC call as metadata.
const FORWARDED_HEADERS: [&str; 3] = ["authorization", "traceparent", "tracestate"];

/// The gateway, cheap to clone (an axum handler's state).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every type the server knows (a kind's own included), read per request.
    types: crate::types::Types,
    routes: Vec<Route>,
    grpc: GrpcService,
    max_body_bytes: usize,
    /// The input type of a kind, for a submission that leaves out its input's `@type`.
    input_type_of: Option<InputTypeOf>,
}

/// The full name of a kind's input message, if the kind is known.
pub type InputTypeOf = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl Gateway {
    /// A gateway serving the HTTP rules of `services` (full names, in oprun's protos) by
    /// calling `grpc`, reading and writing JSON with the types `types` knows, refusing request
    /// bodies over `max_body_bytes`.
    ///
    /// # Errors
    /// [`RulesError`] for a rule that cannot be served.
    pub fn new(
        types: crate::types::Types,
        services: &[&str],
        grpc: GrpcService,
        max_body_bytes: usize,
    ) -> Result<Self, RulesError> {
        let routes = routes(crate::proto::descriptor_pool(), services)?;
        Ok(Self {
            inner: Arc::new(Inner {
                types,
                routes,
                grpc,
                max_body_bytes,
                input_type_of: None,
            }),
        })
    }

    /// Lets a submission leave out its input's `@type` when `input_type_of` knows its kind.
    pub fn with_input_types(mut self, input_type_of: InputTypeOf) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.input_type_of = Some(input_type_of);
        }
        self
    }

    /// The routes served.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// The descriptor pool now (oprun's types, and every kind's).
    pub fn pool(&self) -> Arc<DescriptorPool> {
        self.inner.types.pool()
    }

    /// Serves one HTTP request.
    pub async fn handle(&self, request: http::Request<Body>) -> Response {
        match self.transcode(request).await {
            Ok(response) => response,
            Err(status) => error_response(&status, &self.pool()),
        }
    }

    async fn transcode(&self, request: http::Request<Body>) -> Result<Response, Status> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        if percent_decode(path).is_none() {
            return Err(invalid(format!(
                "the path {} is not valid UTF-8 once percent-decoded (or has a malformed escape)",
                quote(path)
            )));
        }
        // HEAD is answered as GET, without the body.
        let head = parts.method == Method::HEAD;
        let method = if head { &Method::GET } else { &parts.method };
        let mut allowed: Vec<&Method> = Vec::new();
        let mut found = None;
        for route in &self.inner.routes {
            if let Some(bindings) = route.template.matches(path) {
                if route.method == *method {
                    found = Some((route, bindings));
                    break;
                }
                allowed.push(&route.method);
            }
        }
        let Some((route, bindings)) = found else {
            if allowed.is_empty() {
                return Err(gateway_status(
                    Code::NotFound,
                    "NO_ROUTE",
                    format!(
                        "no route for {} {}; see /openapi.json",
                        parts.method,
                        quote(path)
                    ),
                ));
            }
            let mut allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            if allow.contains(&"GET") {
                allow.push("HEAD");
            }
            return Ok(super::error::method_not_allowed(
                &parts.method,
                path,
                &allow,
                &self.pool(),
            ));
        };
        // The request's and the reply's types from the pool of now, so that an `Any` of a
        // kind's own type (declared by a worker since start-up) is read and written.
        let pool = self.pool();
        let input = pool
            .get_message_by_name(route.rpc.input().full_name())
            .unwrap_or_else(|| route.rpc.input());
        let output = pool
            .get_message_by_name(route.rpc.output().full_name())
            .unwrap_or_else(|| route.rpc.output());
        let mut json = match &route.body {
            None => Map::new(),
            Some(field) => {
                check_content_type(&parts.headers)?;
                let bytes = axum::body::to_bytes(body, self.inner.max_body_bytes)
                    .await
                    .map_err(|_| {
                        gateway_status(
                            Code::InvalidArgument,
                            "BODY_TOO_LARGE",
                            format!(
                                "the request body is larger than {} bytes, was cut short, or \
                                 did not arrive in time (--read-timeout)",
                                self.inner.max_body_bytes
                            ),
                        )
                    })?;
                let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                    serde_json::Value::Object(Map::new())
                } else {
                    super::strict_json::parse(&bytes)
                        .map_err(|e| invalid(format!("the request body is not valid JSON: {e}")))?
                };
                if field == "*" {
                    match value {
                        serde_json::Value::Object(map) => map,
                        _ => {
                            return Err(invalid(format!(
                                "the request body must be a JSON object ({})",
                                input.full_name()
                            )))
                        }
                    }
                } else {
                    let mut map = Map::new();
                    set_path(&mut map, &input, field, value)?;
                    map
                }
            }
        };
        let mut enum_numbers = false;
        for (key, value) in query_pairs(parts.uri.query().unwrap_or(""))? {
            if let Some(system) = key.strip_prefix('$') {
                // System parameters: `$alt=json;enum-encoding=int` (Google's REST clients
                // send it) asks for enums as numbers.
                if system == "alt" && value.split(';').any(|p| p == "enum-encoding=int") {
                    enum_numbers = true;
                }
                continue;
            }
            if route.body.as_deref() == Some("*") {
                return Err(invalid(format!(
                    "query parameter {} is not accepted: {} {} takes the whole request \
                     in its body",
                    quote(&key),
                    route.method,
                    route.template
                )));
            }
            let fields = field_path(&input, &key).ok_or_else(|| {
                invalid(format!(
                    "unknown query parameter {}: {} has no such field",
                    quote(&key),
                    input.full_name()
                ))
            })?;
            let Some(last) = fields.last() else {
                continue;
            };
            let converted = query_value(last, &value)
                .map_err(|why| invalid(format!("query parameter {}: {why}", quote(&key))))?;
            set_path(&mut json, &input, &key, converted)?;
        }
        for (field, value) in bindings {
            set_path(&mut json, &input, &field, serde_json::Value::String(value))?;
        }
        if input.full_name() == "oprun.v1.SubmitTaskRequest" {
            self.type_the_input(&mut json)?;
        }
        let json = serde_json::Value::Object(json);
        let message = DynamicMessage::deserialize(input.clone(), &json).map_err(|e| {
            // serde's words ("failed to parse duration") neither name the field nor say what
            // is accepted.
            let why =
                crate::json::time_field_hint(&input, &json, "").unwrap_or_else(|| e.to_string());
            invalid(format!("invalid {}: {why}", input.full_name()))
        })?;
        let mut call = tonic::Request::new(message);
        forward_headers(&parts.headers, call.metadata_mut());
        let grpc_path = route.path.clone();
        let codec = DynamicCodec { output };
        let mut client = tonic::client::Grpc::new(self.inner.grpc.clone());
        let Ok(()) = client.ready().await;
        let options = if enum_numbers {
            SerializeOptions::new().use_enum_numbers(true)
        } else {
            SerializeOptions::new()
        };
        let response_body = route.response_body.clone();
        if route.rpc.is_server_streaming() {
            // A stream the service can hand over as batches is written from their shared
            // server-sent-events form (made once for every reader); any other through its
            // messages.
            let handoff = crate::service::Handoff::default();
            if !enum_numbers && response_body.is_none() {
                call.extensions_mut().insert(handoff.clone());
            }
            let stream = client
                .server_streaming(call, grpc_path, codec)
                .await?
                .into_inner();
            if let Some(changes) = handoff.take() {
                drop(stream);
                if head {
                    return Ok(super::sse::head());
                }
                return Ok(super::sse::response(changes, Arc::clone(&pool)));
            }
            if head {
                return Ok((
                    StatusCode::OK,
                    [(http::header::CONTENT_TYPE, "text/event-stream")],
                )
                    .into_response());
            }
            let pool = Arc::clone(&pool);
            let events = stream.map(move |item| {
                Ok::<_, Infallible>(match item {
                    Ok(message) => match to_json(&message, response_body.as_deref(), &options) {
                        Ok(text) => Event::default().data(text),
                        Err(status) => error_event(&status, &pool),
                    },
                    Err(status) => error_event(&status, &pool),
                })
            });
            return Ok(Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response());
        }
        let reply = client.unary(call, grpc_path, codec).await?.into_inner();
        if head {
            return Ok((
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
            )
                .into_response());
        }
        let text = bytes::Bytes::from(to_json(&reply, response_body.as_deref(), &options)?);
        Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            Body::from(text),
        )
            .into_response())
    }
}

/// A request body must say it is JSON (`application/json`, parameters such as `charset`
/// allowed): a web page can send a cross-site POST without a CORS preflight only with another
/// type (`text/plain`, a form), so taking any type as JSON would let any page the user visits
/// act on a server on their machine. A request with no body at all needs no type.
fn check_content_type(headers: &HeaderMap) -> Result<(), Status> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        let empty = headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || (!headers.contains_key(http::header::CONTENT_LENGTH)
                && !headers.contains_key(http::header::TRANSFER_ENCODING));
        if empty {
            return Ok(());
        }
        return Err(unsupported_media_type("no Content-Type".to_owned()));
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        _ => Err(unsupported_media_type(format!(
            "Content-Type {}",
            quote(&String::from_utf8_lossy(value.as_bytes()))
        ))),
    }
}

/// The refusal of a body that is not said to be JSON: HTTP 415 (INVALID_ARGUMENT in gRPC's
/// words), reason `UNSUPPORTED_MEDIA_TYPE`.
fn unsupported_media_type(what: String) -> Status {
    gateway_status(
        Code::InvalidArgument,
        "UNSUPPORTED_MEDIA_TYPE",
        format!(
            "the request body has {what}; send it as JSON with \"Content-Type: application/json\""
        ),
    )
}

impl Gateway {
    /// Gives a submission's input the `@type` of its kind's input when it has none (a kind
    /// fixes its input's type, so a REST client need not repeat it).
    fn type_the_input(&self, json: &mut Map<String, serde_json::Value>) -> Result<(), Status> {
        let Some(serde_json::Value::Object(input)) = json.get_mut("input") else {
            return Ok(());
        };
        if input.contains_key("@type") {
            return Ok(());
        }
        let kind = match json.get("kind") {
            Some(serde_json::Value::String(kind)) => kind.clone(),
            _ => {
                return Err(invalid(
                    "the input has no \"@type\", and no kind names it".to_owned(),
                ))
            }
        };
        let found = self.inner.input_type_of.as_ref().and_then(|f| f(&kind));
        let Some(type_name) = found else {
            return Err(invalid(format!(
                "the input has no \"@type\", and kind {} is not known here: give \"@type\" \
                 (\"type.googleapis.com/<its input message>\") or a known kind",
                quote(&kind)
            )));
        };
        let at_type = serde_json::Value::String(format!("type.googleapis.com/{type_name}"));
        if let Some(input) = json.get_mut("input") {
            if has_special_json(&type_name) {
                // A well-known type with a JSON form of its own is the `value` of its `Any`.
                let value = std::mem::take(input);
                *input = serde_json::json!({ "@type": at_type, "value": value });
            } else if let serde_json::Value::Object(object) = input {
                object.insert("@type".to_owned(), at_type);
            }
        }
        Ok(())
    }
}

/// Whether a message is a well-known type whose proto3 JSON is not an object of its fields
/// (inside an `Any`, such a value goes under `value`).
fn has_special_json(type_name: &str) -> bool {
    matches!(
        type_name,
        "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Duration"
            | "google.protobuf.Timestamp"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

fn error_event(status: &Status, pool: &DescriptorPool) -> Event {
    Event::default()
        .event("error")
        .data(super::error::error_body(status, pool).to_string())
}

fn to_json(
    message: &DynamicMessage,
    field: Option<&str>,
    options: &SerializeOptions,
) -> Result<String, Status> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let done = match field {
        None => message.serialize_with_options(&mut ser, options),
        Some(name) => match message.get_field_by_name(name).map(|v| v.into_owned()) {
            Some(Value::Message(m)) => m.serialize_with_options(&mut ser, options),
            _ => return Err(Status::internal("the response field is not a message")),
        },
    };
    done.map_err(|e| Status::internal(format!("cannot render the response as JSON: {e}")))?;
    String::from_utf8(out).map_err(|_| Status::internal("the response JSON is not UTF-8"))
}

fn forward_headers(headers: &HeaderMap, metadata: &mut tonic::metadata::MetadataMap) {
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.as_bytes()),
                MetadataValue::try_from(value),
            ) {
                metadata.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: [&str; 3] = [
        "google.longrunning.Operations",
        "oprun.v1.TaskService",
        "oprun.v1.SnapshotService",
    ];

    /// The routes come from the protos' rules, verbs first.
    #[test]
    fn routes_come_from_the_rules() {
        let routes = routes(crate::proto::descriptor_pool(), &SERVICES).expect("valid rules");
        let seen: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.template, r.grpc_path()))
            .collect();
        for want in [
            "GET /v1/{name=operations} /google.longrunning.Operations/ListOperations",
            "GET /v1/{name=operations/**} /google.longrunning.Operations/GetOperation",
            "DELETE /v1/{name=operations/**} /google.longrunning.Operations/DeleteOperation",
            "POST /v1/{name=operations/**}:cancel /google.longrunning.Operations/CancelOperation",
            "POST /v1/tasks:submit /oprun.v1.TaskService/SubmitTask",
            "POST /v1/tasks:batchSubmit /oprun.v1.TaskService/BatchSubmitTasks",
            "POST /v1/snapshots /oprun.v1.SnapshotService/CreateSnapshot",
        ] {
            assert!(
                seen.iter().any(|s| s == want),
                "{want} missing from {seen:#?}"
            );
        }
        let first_plain = routes
            .iter()
            .position(|r| r.template.verb().is_none())
            .expect("some routes have no verb");
        assert!(routes[first_plain..]
            .iter()
            .all(|r| r.template.verb().is_none()));
        // WaitOperation has no rule, so no route.
        assert!(!seen.iter().any(|s| s.contains("WaitOperation")));
    }

    /// Query parameters take the JSON form of their field; bad values say why.
    #[test]
    fn query_values_follow_the_field_kind() {
        let pool = crate::proto::descriptor_pool();
        let list = pool
            .get_message_by_name("google.longrunning.ListOperationsRequest")
            .expect("in the pool");
        let size = list.get_field_by_name("page_size").expect("field");
        assert_eq!(query_value(&size, "5").expect("ok"), serde_json::json!("5"));
        let partial = list
            .get_field_by_name("return_partial_success")
            .expect("field");
        assert_eq!(
            query_value(&partial, "true").expect("ok"),
            serde_json::json!(true)
        );
        assert!(query_value(&partial, "yes").is_err());
        let mut json = Map::new();
        set_path(&mut json, &list, "pageSize", serde_json::json!("7")).expect("set");
        set_path(&mut json, &list, "page_token", serde_json::json!("t")).expect("set");
        let message = DynamicMessage::deserialize(list.clone(), serde_json::Value::Object(json))
            .expect("valid request");
        assert_eq!(
            message
                .get_field_by_name("page_size")
                .map(|v| v.into_owned()),
            Some(Value::I32(7))
        );
        assert!(set_path(&mut Map::new(), &list, "nope", serde_json::json!(1)).is_err());
        assert_eq!(
            query_pairs("a=b+c&d=%2F&e").expect("valid"),
            vec![
                ("a".to_owned(), "b c".to_owned()),
                ("d".to_owned(), "/".to_owned()),
                ("e".to_owned(), String::new())
            ]
        );
        assert!(query_pairs("a=%zz").is_err());
    }
}
