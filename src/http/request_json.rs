//! A REST request's parts as the RPC's request message in proto3 JSON: the query string's
//! pairs converted by each field's type, and values set at dotted field paths.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Map;
use tonic::{Code, Status};

use super::error::gateway_status;
use super::routes::field_path;
use super::template::percent_decode;
use crate::text::quote;

/// `key=value` pairs of a query string, `+` and `%XX` decoded.
pub(super) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Status> {
    let decode = |s: &str| {
        percent_decode(&s.replace('+', " ")).ok_or_else(|| {
            invalid(format!(
                "the query has a malformed escape (or is not UTF-8 once decoded) in {}",
                quote(s)
            ))
        })
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// A query parameter's text as the JSON value proto3 JSON expects for `field`.
pub(super) fn query_value(field: &FieldDescriptor, raw: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if field.is_map() {
        return Err("map fields cannot be given in the query".to_owned());
    }
    Ok(match field.kind() {
        Kind::Bool => match raw {
            "true" | "1" => J::Bool(true),
            "false" | "0" => J::Bool(false),
            _ => return Err(format!("{} is not true or false", quote(raw))),
        },
        Kind::Double | Kind::Float => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| J::String(raw.to_owned()), J::Number),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => whole::<i32>(raw)?,
        Kind::Uint32 | Kind::Fixed32 => whole::<u32>(raw)?,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => whole::<i64>(raw)?,
        Kind::Uint64 | Kind::Fixed64 => whole::<u64>(raw)?,
        Kind::Enum(_) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => raw
            .parse::<i64>()
            .map(|n| J::Number(n.into()))
            .map_err(|_| format!("{} is too large", quote(raw)))?,
        Kind::Message(m) if !is_string_like(&m) => {
            return Err(format!(
                "{} is a message; send it in a request body",
                field.name()
            ))
        }
        _ => J::String(raw.to_owned()),
    })
}

/// A whole number that fits `T`, as proto3 JSON's string form.
fn whole<T: std::str::FromStr>(raw: &str) -> Result<serde_json::Value, String> {
    raw.parse::<T>()
        .map(|_| serde_json::Value::String(raw.to_owned()))
        .map_err(|_| {
            format!(
                "{} is not a whole number in the range of {}",
                quote(raw),
                std::any::type_name::<T>()
            )
        })
}

/// Whether a query parameter can carry `field`: a scalar, an enum, or a message whose JSON is
/// a string (what [`query_value`] accepts; the OpenAPI document lists the same).
pub(super) fn in_query(field: &FieldDescriptor) -> bool {
    !field.is_map()
        && match field.kind() {
            Kind::Message(m) => is_string_like(&m),
            _ => true,
        }
}

/// Messages whose proto3 JSON form is a string (or accepts one), so a query parameter can
/// carry them.
fn is_string_like(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
    )
}

/// Sets `path` (dotted, proto or JSON names) in a JSON object for `desc`, under the fields'
/// JSON names; a repeated field collects values.
pub(super) fn set_path(
    json: &mut Map<String, serde_json::Value>,
    desc: &MessageDescriptor,
    path: &str,
    value: serde_json::Value,
) -> Result<(), Status> {
    let fields = field_path(desc, path)
        .ok_or_else(|| invalid(format!("{} has no field {}", desc.full_name(), quote(path))))?;
    let mut object = json;
    let count = fields.len();
    for (i, field) in fields.iter().enumerate() {
        let key = field.json_name().to_owned();
        if i + 1 == count {
            if field.is_list() {
                let entry = object
                    .entry(key)
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                match entry {
                    serde_json::Value::Array(items) => items.push(value),
                    other => *other = serde_json::Value::Array(vec![value]),
                }
            } else {
                object.insert(key, value);
            }
            return Ok(());
        }
        let entry = object
            .entry(key)
            .or_insert_with(|| serde_json::Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(Map::new());
        }
        let serde_json::Value::Object(next) = entry else {
            return Err(invalid(format!("{} cannot be set", quote(path))));
        };
        object = next;
    }
    Ok(())
}

pub(super) fn invalid(message: String) -> Status {
    gateway_status(Code::InvalidArgument, "INVALID_REQUEST", message)
}
