//! JSON as the REST gateway reads request bodies: like `serde_json::from_slice`, but an
//! object that names one key twice is refused instead of keeping the last value, so that
//! `{"filter": "done = true", "filter": "done = false"}` cannot mean what one reader of it
//! sees and another does not.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::text::quote;

/// Parses `bytes` as one JSON value.
///
/// # Errors
/// serde_json's error for text that is not JSON, or one naming a key given twice.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A seed that builds a [`Value`], refusing repeated keys at every depth.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "the key {} is given twice in one object; give each key once",
                    quote(&key)
                )));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values parse as serde_json parses them; a repeated key is refused at any depth.
    #[test]
    fn repeated_keys_are_refused() {
        let text = r#"{"a": [1, 2.5, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            parse(text.as_bytes()).expect("valid"),
            serde_json::from_str::<Value>(text).expect("valid")
        );
        for bad in [
            r#"{"filter":"done = true","filter":"done = false"}"#,
            r#"{"input": {"a": 1, "a": 2}}"#,
            r#"[{"k": 1, "k": 1}]"#,
        ] {
            let e = parse(bad.as_bytes()).expect_err(bad).to_string();
            assert!(e.contains("given twice"), "{bad}: {e}");
        }
        assert!(parse(b"{} trailing").is_err());
    }
}
