//! Proto3 JSON for oprun's messages (with `Any` rendered with its `@type`), through
//! prost-reflect and the descriptor set compiled into the library.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use prost_types::Any;

/// Errors of JSON conversion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The message type is not among oprun's protos.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The JSON does not fit the message.
    #[error("invalid JSON for {type_name}: {reason}")]
    Invalid {
        /// The message type.
        type_name: String,
        /// What was wrong.
        reason: String,
    },
    /// The descriptor set could not be loaded (a build problem).
    #[error("cannot load descriptors: {0}")]
    Descriptors(String),
}

/// Converts oprun's messages to and from proto3 JSON.
#[derive(Clone)]
pub struct JsonCodec {
    pool: DescriptorPool,
}

impl JsonCodec {
    /// A codec over every message oprun's protos define (and the types they import).
    ///
    /// # Errors
    /// [`JsonError::Descriptors`] if the embedded descriptor set is unreadable.
    pub fn new() -> Result<Self, JsonError> {
        // The pool decoded once per process (a clone shares it).
        Ok(Self {
            pool: crate::proto::descriptor_pool().clone(),
        })
    }

    /// A codec over oprun's messages and those `files` define (a kind's own types, as
    /// `ListTaskKinds` gives them with `with_descriptors`). A set that does not fit is skipped.
    pub fn with_files<'a>(
        files: impl IntoIterator<Item = &'a prost_types::FileDescriptorSet>,
    ) -> Self {
        let mut pool = crate::proto::descriptor_pool().clone();
        for set in files {
            let fresh: Vec<_> = set
                .file
                .iter()
                .filter(|f| pool.get_file_by_name(f.name()).is_none())
                .cloned()
                .collect();
            let mut next = pool.clone();
            if next.add_file_descriptor_protos(fresh).is_ok() {
                pool = next;
            }
        }
        Self { pool }
    }

    /// Renders a message of type `type_name` (encoded in `bytes`) as pretty JSON.
    ///
    /// # Errors
    /// [`JsonError`] when the type is unknown or the bytes do not decode.
    pub fn to_json(&self, type_name: &str, bytes: &[u8]) -> Result<String, JsonError> {
        let desc = self
            .pool
            .get_message_by_name(type_name)
            .ok_or_else(|| JsonError::UnknownType(type_name.to_owned()))?;
        let msg = DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::Invalid {
            type_name: type_name.to_owned(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::pretty(&mut out);
        msg.serialize_with_options(&mut ser, &SerializeOptions::new())
            .map_err(|e| JsonError::Invalid {
                type_name: type_name.to_owned(),
                reason: e.to_string(),
            })?;
        String::from_utf8(out).map_err(|e| JsonError::Invalid {
            type_name: type_name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Renders a prost message as pretty JSON.
    ///
    /// # Errors
    /// [`JsonError`] when the type is not among oprun's protos.
    pub fn message_to_json<M: Message + prost::Name>(&self, m: &M) -> Result<String, JsonError> {
        self.to_json(&M::full_name(), &m.encode_to_vec())
    }

    /// Parses JSON as a message of type `type_name` and packs it into an `Any`.
    ///
    /// # Errors
    /// [`JsonError`] when the type is unknown or the JSON does not fit it.
    pub fn any_from_json(&self, type_name: &str, json: &str) -> Result<Any, JsonError> {
        let desc = self
            .pool
            .get_message_by_name(type_name)
            .ok_or_else(|| JsonError::UnknownType(type_name.to_owned()))?;
        let mut de = serde_json::Deserializer::from_str(json);
        let msg = DynamicMessage::deserialize(desc.clone(), &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| JsonError::Invalid {
                type_name: type_name.to_owned(),
                // serde's words ("failed to parse duration") do not say what is accepted.
                reason: serde_json::from_str::<serde_json::Value>(json)
                    .ok()
                    .and_then(|value| time_field_hint(&desc, &value, ""))
                    .unwrap_or_else(|| e.to_string()),
            })?;
        Ok(Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: msg.encode_to_vec(),
        })
    }
}

/// What is wrong with the first `Duration` or `Timestamp` field of `value` (a message of
/// type `desc`, at `path`) that proto3 JSON refuses, said with what it accepts. It looks into
/// messages, lists and `Any`s (by their `@type`, in `desc`'s pool).
pub(crate) fn time_field_hint(
    desc: &MessageDescriptor,
    value: &serde_json::Value,
    path: &str,
) -> Option<String> {
    let object = value.as_object()?;
    for (key, v) in object {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            continue;
        };
        let Kind::Message(message) = field.kind() else {
            continue;
        };
        let name = format!("{path}{key}");
        let items: Vec<&serde_json::Value> = match v {
            serde_json::Value::Array(items) if field.is_list() => items.iter().collect(),
            _ if field.is_map() => continue,
            other => vec![other],
        };
        for item in items {
            let text = item.as_str();
            let hint = match message.full_name() {
                "google.protobuf.Duration" if !text.is_some_and(is_json_duration) => Some(format!(
                    "field {name:?}: {item} is not a Duration; proto3 JSON writes seconds \
                         with an \"s\" suffix in a string, e.g. \"90s\", \"1.5s\" or \"3600s\" \
                         for an hour"
                )),
                "google.protobuf.Timestamp"
                    if text.is_none_or(|t| t.parse::<prost_types::Timestamp>().is_err()) =>
                {
                    Some(format!(
                        "field {name:?}: {item} is not a Timestamp; proto3 JSON writes an RFC \
                         3339 time ending in Z in a string, e.g. \"2026-11-22T08:00:00Z\""
                    ))
                }
                "google.protobuf.Duration" | "google.protobuf.Timestamp" => None,
                "google.protobuf.Any" => item
                    .get("@type")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|url| url.rsplit('/').next())
                    .and_then(|packed| message.parent_pool().get_message_by_name(packed))
                    .and_then(|packed| time_field_hint(&packed, item, &format!("{name}."))),
                _ => time_field_hint(&message, item, &format!("{name}.")),
            };
            if hint.is_some() {
                return hint;
            }
        }
    }
    None
}

/// Whether `text` is a proto3 JSON Duration: optional `-`, seconds, up to nine fractional
/// digits, then `s`.
fn is_json_duration(text: &str) -> bool {
    let Some(body) = text.strip_suffix('s') else {
        return false;
    };
    let body = body.strip_prefix('-').unwrap_or(body);
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(body.contains('.') && fraction.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{pack, OperationRecord};
    use crate::proto::oprun::v1::SleepInput;

    /// An Operation renders with its metadata's `@type`, and JSON input round-trips.
    #[test]
    fn operation_json_has_at_type_and_input_round_trips() {
        let codec = JsonCodec::new().unwrap();
        let input = codec
            .any_from_json("oprun.v1.SleepInput", r#"{"duration":"2s","steps":4}"#)
            .unwrap();
        let decoded = SleepInput::decode(input.value.as_slice()).unwrap();
        assert_eq!(decoded.steps, 4);
        assert_eq!(decoded.duration.unwrap().seconds, 2);
        let rec = OperationRecord::new_queued("sleep".into(), pack(&decoded), None);
        let json = codec.message_to_json(&rec.to_operation()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["metadata"]["@type"],
            "type.googleapis.com/oprun.v1.OperationMetadata"
        );
        assert_eq!(v["metadata"]["state"], "QUEUED");
        let err = codec
            .any_from_json("oprun.v1.SleepInput", r#"{"nope":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("SleepInput"), "{err}");
    }

    /// A Duration or Timestamp that proto3 JSON refuses is named, with what is accepted.
    #[test]
    fn time_fields_say_what_is_accepted() {
        let codec = JsonCodec::new().unwrap();
        let err = codec
            .any_from_json("oprun.v1.SleepInput", r#"{"duration":"1h"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"field "duration": "1h" is not a Duration"#),
            "{err}"
        );
        assert!(err.contains(r#""90s""#) && err.contains("3600s"), "{err}");
        let err = codec
            .any_from_json(
                "oprun.v1.SubmitTaskRequest",
                r#"{"kind":"sleep","notBefore":"tomorrow"}"#,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"field "notBefore": "tomorrow" is not a Timestamp"#),
            "{err}"
        );
        assert!(err.contains("2026-11-22T08:00:00Z"), "{err}");
        for ok in ["90s", "1.5s", "-2s", "0.000000001s", "3600s"] {
            assert!(is_json_duration(ok), "{ok}");
        }
        for bad in ["1h", "s", "1.s", "1.0000000001s", "1", "--1s", "1.5"] {
            assert!(!is_json_duration(bad), "{bad}");
        }
        // Other mistakes keep serde's own words.
        let err = codec
            .any_from_json("oprun.v1.SleepInput", r#"{"steps":"many"}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("Duration"), "{err}");
    }
}
