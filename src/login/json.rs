//! JSON objects read the strict way: duplicate keys are an error, at any depth.
//!
//! Ruby's JSON parser keeps the last of two equal keys; a parser that kept the first would
//! see another token than GitLab does. Refusing duplicates leaves no room for that.

use std::borrow::Cow;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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
const NOT_OBJECT_MARK: &str = "jwt-gate:not-an-object";

/// One top-level member's value, read without copying what the input already holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
    Null,
    /// An array or object (read with duplicate keys refused at any depth).
    Nested(Value),
}

impl Claim<'_> {
    /// The value as compact JSON text (what `Value`'s `Display` prints).
    pub fn to_json(&self) -> String {
        match self {
            Claim::Str(s) => Value::String(s.to_string()).to_string(),
            Claim::Num(n) => n.to_string(),
            Claim::Bool(b) => b.to_string(),
            Claim::Null => "null".to_string(),
            Claim::Nested(v) => v.to_string(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Claim::Str(s) => Some(s),
            _ => None,
        }
    }

    fn from_value(v: Value) -> Claim<'static> {
        match v {
            Value::String(s) => Claim::Str(Cow::Owned(s)),
            Value::Number(n) => Claim::Num(n),
            Value::Bool(b) => Claim::Bool(b),
            Value::Null => Claim::Null,
            nested => Claim::Nested(nested),
        }
    }
}

/// The members of a JSON object in input order, keys and strings borrowed from the input
/// where they hold no escapes: the request path reads a token's header and claims with one
/// allocation instead of a map node, key and value per member.
#[derive(Debug, Clone, PartialEq)]
pub struct Members<'a> {
    items: Vec<(Cow<'a, str>, Claim<'a>)>,
}

impl<'a> Members<'a> {
    /// The value of `key`; the last one when the key repeats (Ruby's JSON keeps the last).
    pub fn get(&self, key: &str) -> Option<&Claim<'a>> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.items.iter().any(|(k, _)| k == key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a top-level key repeats (keys compare after unescaping).
    pub fn has_duplicates(&self) -> bool {
        let n = self.items.len();
        if n <= 16 {
            return (1..n).any(|i| self.items[..i].iter().any(|(k, _)| *k == self.items[i].0));
        }
        let mut keys: Vec<&str> = self.items.iter().map(|(k, _)| k.as_ref()).collect();
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0] == w[1])
    }
}

/// Parse `bytes` as a JSON object into its members. Duplicate keys inside nested values are
/// an error ([`JsonError::DuplicateKey`]); repeated top-level keys are kept, for the caller to
/// refuse ([`Members::has_duplicates`]) or to resolve the way Ruby does ([`Members::get`]).
pub fn parse_members(bytes: &[u8]) -> Result<Members<'_>, JsonError> {
    match serde_json::from_slice::<Members>(bytes) {
        Ok(m) => Ok(m),
        Err(e) => {
            let text = e.to_string();
            if text.contains(NOT_OBJECT_MARK) {
                Err(JsonError::NotObject)
            } else if text.contains(DUP_MARK) {
                Err(JsonError::DuplicateKey)
            } else {
                Err(JsonError::Syntax)
            }
        }
    }
}

/// Like [`parse_members`], but a nested duplicate is resolved the Ruby way (last wins)
/// instead of refused; the flag says whether any key repeated, at any depth.
pub fn parse_members_lenient(bytes: &[u8]) -> Result<(Members<'_>, bool), JsonError> {
    match parse_members(bytes) {
        Ok(m) => {
            let dup = m.has_duplicates();
            Ok((m, dup))
        }
        Err(JsonError::DuplicateKey) => {
            let map = parse_object_lenient(bytes).ok_or(JsonError::Syntax)?;
            let items = map
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Claim::from_value(v)))
                .collect();
            Ok((Members { items }, true))
        }
        Err(e) => Err(e),
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Members<'de>, E> {
        Err(E::custom(NOT_OBJECT_MARK))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Members<'de>, A::Error> {
        // read it through (a duplicate inside is still reported as one), then refuse it
        NoDupVisitor.visit_seq(seq)?;
        Err(de::Error::custom(NOT_OBJECT_MARK))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut items = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(k)) = map.next_key()? {
            let v = map.next_value::<Claim>()?;
            items.push((k, v));
        }
        Ok(Members { items })
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Claim<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ClaimVisitor)
    }
}

struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = Claim<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Claim<'de>, E> {
        Ok(Claim::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Claim<'de>, E> {
        Ok(Claim::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Claim<'de>, E> {
        Ok(Claim::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Claim<'de>, E> {
        // JSON has no NaN or infinity, so this is always a number
        Ok(Number::from_f64(v).map_or(Claim::Null, Claim::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Claim<'de>, E> {
        Ok(Claim::Null)
    }
    fn visit_none<E>(self) -> Result<Claim<'de>, E> {
        Ok(Claim::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Claim<'de>, A::Error> {
        NoDupVisitor.visit_seq(seq).map(|NoDup(v)| Claim::Nested(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Claim<'de>, A::Error> {
        NoDupVisitor.visit_map(map).map(|NoDup(v)| Claim::Nested(v))
    }
}

/// Parse `bytes` as a JSON object, refusing duplicate keys. The request path reads tokens
/// with [`parse_members`]; this map parse is the reference `tests/json_parse.rs` holds it to.
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
    fn members_borrow_unescaped_text_and_refuse_what_the_map_refused() {
        let m = parse_members(
            br#"{"sub":"a\u0062c","iss":"x","n":1.5,"b":true,"z":null,"o":{"k":[1]}}"#,
        )
        .unwrap();
        assert!(matches!(m.get("iss"), Some(Claim::Str(Cow::Borrowed("x")))));
        assert_eq!(m.get("sub").and_then(Claim::as_str), Some("abc"));
        assert_eq!(m.get("n").map(Claim::to_json).as_deref(), Some("1.5"));
        assert_eq!(m.get("b"), Some(&Claim::Bool(true)));
        assert_eq!(m.get("z"), Some(&Claim::Null));
        assert_eq!(
            m.get("o").map(Claim::to_json).as_deref(),
            Some(r#"{"k":[1]}"#)
        );
        assert_eq!(
            m.get("sub").map(Claim::to_json).as_deref(),
            Some(r#""abc""#)
        );
        assert!(!m.has_duplicates() && m.len() == 6);

        // the same verdicts as the strict map parse
        for (input, want) in [
            (&br#"{"x":{"a":1,"a":1}}"#[..], JsonError::DuplicateKey),
            (br#"{"x":[{"a":1,"a":1}]}"#, JsonError::DuplicateKey),
            (br#"[{"a":1,"a":1}]"#, JsonError::DuplicateKey),
            (b"[1]", JsonError::NotObject),
            (b"\"s\"", JsonError::NotObject),
            (b"7", JsonError::NotObject),
            (b"{", JsonError::Syntax),
            (b"{} x", JsonError::Syntax),
            (b"\xff", JsonError::Syntax),
            (b"{\"a\":\"\xff\"}", JsonError::Syntax),
        ] {
            assert_eq!(
                parse_members(input),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(parse_object_strict(input).map(|_| ()), Err(want));
        }

        // top-level repeats are kept for the caller: refused, or resolved like Ruby
        let m = parse_members(br#"{"alg":"none","\u0061lg":"HS256"}"#).unwrap();
        assert!(m.has_duplicates());
        assert_eq!(m.get("alg").and_then(Claim::as_str), Some("HS256"));
        // more members than the pairwise scan handles: the sorted check
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        let (unique, repeated) = (
            format!("{{{many}\"end\":0}}"),
            format!("{{{many}\"k7\":0}}"),
        );
        assert!(!parse_members(unique.as_bytes()).unwrap().has_duplicates());
        assert!(parse_members(repeated.as_bytes()).unwrap().has_duplicates());
    }

    #[test]
    fn lenient_members_resolve_nested_repeats_like_ruby() {
        let (m, dup) = parse_members_lenient(br#"{"alg":"HS256","x":{"a":1,"a":2}}"#).unwrap();
        assert!(dup);
        assert_eq!(m.get("alg").and_then(Claim::as_str), Some("HS256"));
        assert_eq!(
            m.get("x").map(Claim::to_json).as_deref(),
            Some(r#"{"a":2}"#)
        );
        let (_, dup) = parse_members_lenient(br#"{"alg":"HS256"}"#).unwrap();
        assert!(!dup);
        assert_eq!(
            parse_members_lenient(b"[]").map(|_| ()),
            Err(JsonError::NotObject)
        );
    }

    #[test]
    fn lenient_parse_keeps_the_last_duplicate_like_ruby() {
        let m = parse_object_lenient(br#"{"alg":"none","alg":"HS256"}"#).unwrap();
        assert_eq!(m["alg"], "HS256");
    }
}
