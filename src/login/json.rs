//! JSON objects read the strict way: duplicate keys are an error, at any depth.
//!
//! Ruby's JSON parser keeps the last of two equal keys; a parser that kept the first would
//! see another token than GitLab does. Refusing duplicates leaves no room for that.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, or not UTF-8.
    Syntax,
    /// Valid JSON, but not an object.
    NotObject,
    /// An object (at any depth) repeats a key.
    DuplicateKey,
}

const DUP_MARK: &str = "jwt-gate:duplicate-key";

/// Parse `bytes` as a JSON object, refusing duplicate keys.
pub fn parse_object_strict(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match serde_json::from_slice::<NoDup>(bytes) {
        Ok(NoDup(Value::Object(m))) => Ok(m),
        Ok(_) => Err(JsonError::NotObject),
        Err(e) if e.to_string().contains(DUP_MARK) => Err(JsonError::DuplicateKey),
        Err(_) => Err(JsonError::Syntax),
    }
}

/// Parse leniently, the way Ruby does (the last duplicate wins). Only for `explain` and for
/// reading `alg` out of a header whose duplicates are reported later, in check order.
pub fn parse_object_lenient(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

struct NoDup(Value);

impl<'de> Deserialize<'de> for NoDup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupVisitor)
    }
}

struct NoDupVisitor;

impl<'de> Visitor<'de> for NoDupVisitor {
    type Value = NoDup;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<NoDup, E> {
        Ok(NoDup(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NoDup, E> {
        Ok(NoDup(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<NoDup, E> {
        Ok(NoDup(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NoDup, E> {
        Ok(NoDup(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<NoDup, E> {
        Ok(NoDup(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<NoDup, E> {
        Ok(NoDup(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<NoDup, E> {
        Ok(NoDup(Value::Null))
    }
    fn visit_none<E>(self) -> Result<NoDup, E> {
        Ok(NoDup(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDup, A::Error> {
        let mut v = Vec::new();
        while let Some(NoDup(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(NoDup(Value::Array(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDup, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let NoDup(v) = map.next_value()?;
            if m.insert(k, v).is_some() {
                return Err(de::Error::custom(DUP_MARK));
            }
        }
        Ok(NoDup(Value::Object(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse_object_strict(br#"{"a":1,"b":{"c":[1,{"d":2}]}}"#).is_ok());
        assert_eq!(
            parse_object_strict(br#"{"a":1,"a":2}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            parse_object_strict(br#"{"x":{"a":1,"a":1}}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            parse_object_strict(br#"{"x":[{"a":1,"a":1}]}"#),
            Err(JsonError::DuplicateKey)
        );
        // escaped spelling of the same key is the same key
        assert_eq!(
            parse_object_strict(br#"{"alg":1,"\u0061lg":2}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(parse_object_strict(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object_strict(b"{"), Err(JsonError::Syntax));
        assert_eq!(parse_object_strict(b"\xff"), Err(JsonError::Syntax));
    }

    #[test]
    fn lenient_parse_keeps_the_last_duplicate_like_ruby() {
        let m = parse_object_lenient(br#"{"alg":"none","alg":"HS256"}"#).unwrap();
        assert_eq!(m["alg"], "HS256");
    }
}
