//! Proto3 JSON for oprun's messages (with `Any` rendered with its `@type`), through
//! prost-reflect and the descriptor set compiled into the library.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use prost_types::Any;

use crate::proto::FILE_DESCRIPTOR_SET;

/// Errors of JSON conversion.
#[derive(Debug, thiserror::Error)]
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
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .map_err(|e| JsonError::Descriptors(e.to_string()))?;
        Ok(Self { pool })
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
        let msg = DynamicMessage::deserialize(desc, &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| JsonError::Invalid {
                type_name: type_name.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: msg.encode_to_vec(),
        })
    }
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
}
