//! The OpenAPI 3 document of the gateway (`/openapi.json`), generated from the same routes
//! and descriptors it serves: one path per HTTP rule, one schema per message, proto3 JSON
//! types (64-bit integers as strings, `Any` with `@type`, timestamps and durations as strings).
//! Each task kind whose input type the server knows gets a request schema of its own
//! (`oprun.kinds.{kind}.SubmitTaskRequest`, its input that type, `@type` optional), offered
//! beside the generic one for `POST /v1/tasks:submit`.

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

use super::gateway::Gateway;
use super::request_json::in_query;
use super::routes::Route;

/// The RPC whose request body gets the per-kind schemas.
const SUBMIT_TASK: &str = "oprun.v1.TaskService.SubmitTask";

/// A task kind and the full name of its input type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindInput {
    pub kind: String,
    pub input_type: String,
}

/// The document for `gateway`, with a request schema for each of `kinds` whose input type
/// `pool` holds.
pub fn document(gateway: &Gateway, pool: &DescriptorPool, kinds: &[KindInput]) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in gateway.routes() {
        let (path, mut operation) = path_item(route, &mut schemas);
        if route.rpc.full_name() == SUBMIT_TASK && route.body.as_deref() == Some("*") {
            let per_kind = kind_requests(&route.rpc.input(), pool, kinds, &mut schemas);
            if !per_kind.is_empty() {
                let generic =
                    operation["requestBody"]["content"]["application/json"]["schema"].take();
                let mut any_of = per_kind;
                any_of.push(generic);
                operation["requestBody"]["content"]["application/json"]["schema"] =
                    json!({ "anyOf": any_of });
            }
        }
        paths
            .entry(path)
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    let probe = |what: &str| {
        json!({"get": {
            "operationId": what,
            "summary": format!("{what}: 200 while the server can serve, 503 otherwise"),
            "responses": {
                "200": {"description": "serving", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "not serving", "content": {"application/json": {"schema": {"type": "object"}}}}
            }
        }})
    };
    let mut paths: Map<String, Value> = paths
        .into_iter()
        .map(|(p, ops)| (p, Value::Object(ops)))
        .collect();
    paths.insert("/healthz".to_owned(), probe("healthz"));
    paths.insert("/readyz".to_owned(), probe("readyz"));
    schemas.insert("google.rpc.JsonError".to_owned(), error_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "oprun",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "google.longrunning.Operations and oprun's own services over REST/JSON \
                (the HTTP mapping of their google.api.http rules, proto3 JSON). Errors are \
                Google's JSON error."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{}, {"bearer": []}]
    })
}

fn path_item(route: &Route, schemas: &mut BTreeMap<String, Value>) -> (String, Value) {
    let (path, path_params) = route.template.openapi();
    let input = route.rpc.input();
    let bound: Vec<&str> = route.template.fields().collect();
    let mut parameters: Vec<Value> = path_params
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "in": "path", "required": true,
                "schema": {"type": "string", "pattern": if p.many { "^.+$" } else { "^[^/]+$" }},
            })
        })
        .collect();
    if route.body.is_none() {
        for field in input.fields() {
            if bound.contains(&field.name()) || !in_query(&field) {
                continue;
            }
            parameters.push(json!({
                "name": field.json_name(),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas),
            }));
        }
    }
    let output = route.rpc.output();
    let reply = match &route.response_body {
        Some(f) => output
            .get_field_by_name(f)
            .map_or_else(|| json!({}), |f| field_schema(&f, schemas)),
        None => message_schema(&output, schemas),
    };
    let content = if route.rpc.is_server_streaming() {
        json!({"text/event-stream": {"schema": {"type": "string", "description": format!(
            "server-sent events: one `data:` line per {} as proto3 JSON", output.full_name())}}})
    } else {
        json!({"application/json": {"schema": reply}})
    };
    let mut operation = json!({
        "operationId": format!("{}.{}", route.rpc.parent_service().name(), route.rpc.name()),
        "summary": format!("{} (gRPC {})", route.rpc.name(), route.grpc_path()),
        "tags": [route.rpc.parent_service().full_name()],
        "parameters": parameters,
        "responses": {
            "200": {"description": "the RPC's response", "content": content},
            "default": {"description": "Google's JSON error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/google.rpc.JsonError"}}}}
        }
    });
    if let Some(body) = &route.body {
        let schema = if body == "*" {
            message_schema(&input, schemas)
        } else {
            input
                .get_field_by_name(body)
                .map_or_else(|| json!({}), |f| field_schema(&f, schemas))
        };
        operation["requestBody"] = json!({
            "required": false,
            "content": {"application/json": {"schema": schema}}
        });
    }
    (path, operation)
}

/// `$ref`s to a `SubmitTaskRequest` schema per kind (added to `schemas`): `kind` fixed, `input`
/// of the kind's input type.
fn kind_requests(
    request: &MessageDescriptor,
    pool: &DescriptorPool,
    kinds: &[KindInput],
    schemas: &mut BTreeMap<String, Value>,
) -> Vec<Value> {
    // The generic request's own schema: its fields other than kind and input stay as they are.
    let generic = message_schema(request, schemas);
    let base = properties_of(&generic, schemas);
    let mut out = Vec::new();
    for k in kinds {
        let Some(input) = pool.get_message_by_name(&k.input_type) else {
            continue;
        };
        let input_schema = kind_input_schema(&input, schemas);
        let mut properties = base.clone();
        properties.insert(
            "kind".to_owned(),
            json!({"type": "string", "enum": [k.kind]}),
        );
        properties.insert("input".to_owned(), input_schema);
        let name = format!("oprun.kinds.{}.SubmitTaskRequest", component_name(&k.kind));
        schemas.insert(
            name.clone(),
            json!({
                "type": "object",
                "description": format!(
                    "SubmitTaskRequest for kind {:?}: input is a {} (proto3 JSON; its @type may \
                     be left out)",
                    k.kind,
                    input.full_name()
                ),
                "required": ["kind", "input"],
                "properties": properties,
                "additionalProperties": false
            }),
        );
        out.push(json!({"$ref": format!("#/components/schemas/{name}")}));
    }
    out
}

/// The JSON a kind's input takes in a submission: a well-known type's own JSON (given
/// without `@type`), or the message's fields with an optional `@type` naming it.
fn kind_input_schema(input: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if let Some(wkt) = well_known(input) {
        return wkt;
    }
    let reference = message_schema(input, schemas);
    let mut properties = properties_of(&reference, schemas);
    properties.insert(
        "@type".to_owned(),
        json!({"type": "string", "enum": [format!("type.googleapis.com/{}", input.full_name())]}),
    );
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// The properties of the message schema `reference` (a `$ref` into `schemas`) points at.
fn properties_of(reference: &Value, schemas: &BTreeMap<String, Value>) -> Map<String, Value> {
    reference["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| schemas.get(name))
        .and_then(|s| s["properties"].as_object())
        .cloned()
        .unwrap_or_default()
}

/// A kind's name as a piece of a component name (letters, digits, `.`, `-`, `_`).
fn component_name(kind: &str) -> String {
    kind.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn any_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": true
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message", "status"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "details": {"type": "array", "items": any_schema()}
            }
        }}
    })
}

/// A `$ref` to the message's schema, adding it (and those it uses) to `schemas`.
fn message_schema(desc: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if let Some(wkt) = well_known(desc) {
        return wkt;
    }
    let name = desc.full_name().to_owned();
    if !schemas.contains_key(&name) {
        // Placeholder first: a message that refers to itself finds its name taken.
        schemas.insert(name.clone(), json!({}));
        let mut properties = Map::new();
        for field in desc.fields() {
            properties.insert(field.json_name().to_owned(), field_schema(&field, schemas));
        }
        schemas.insert(
            name.clone(),
            json!({"type": "object", "properties": properties, "additionalProperties": false}),
        );
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn well_known(desc: &MessageDescriptor) -> Option<Value> {
    Some(match desc.full_name() {
        "google.protobuf.Any" => any_schema(),
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({"type": "string"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": "integer", "format": "int32"})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "format": "int64"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        _ => return None,
    })
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => entry
                .map_entry_value_field()
                .kind()
                .as_message()
                .map_or_else(
                    || scalar_schema(&entry.map_entry_value_field().kind()),
                    |m| message_schema(m, schemas),
                ),
            other => scalar_schema(&other),
        };
        return json!({"type": "object", "additionalProperties": value});
    }
    let item = match field.kind() {
        Kind::Message(m) => message_schema(&m, schemas),
        other => scalar_schema(&other),
    };
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

fn scalar_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()
        }),
        Kind::Message(m) => json!({"description": m.full_name()}),
    }
}
