//! Property: the allocation-light member parser the request path uses to read a token's
//! header and claims gives exactly the verdicts and values of the strict `serde_json` map
//! parse it replaced: the same values, duplicate keys refused at any depth, the same error
//! on valid JSON, and a refusal wherever the map parse refused.

use jwt_gate::login::json::{parse_members, parse_object_strict, Claim, JsonError};
use proptest::prelude::*;
use serde_json::Value;

fn fragment() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"{"[..],
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        br#""a""#,
        br#""b""#,
        br#""\u0061""#,
        br#""x\"y""#,
        b"1",
        b"-2",
        b"1.5",
        b"1e3",
        b"18446744073709551615",
        b"null",
        b"true",
        "\"\u{e9}\"".as_bytes(),
        br#""\ud800""#,
        br#"{"a":"#,
        br#""a":1"#,
        br#""a":1,"#,
        b"}}",
        b"\xff",
    ])
}

fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let strict = parse_object_strict(bytes);
    let members = parse_members(bytes);
    match (&strict, &members) {
        (Ok(map), Ok(m)) => {
            prop_assert!(!m.has_duplicates());
            prop_assert_eq!(map.len(), m.len());
            for (k, v) in map {
                let got = m.get(k).map(|c| match c {
                    Claim::Str(s) => Value::String(s.to_string()),
                    Claim::Num(n) => Value::Number(n.clone()),
                    Claim::Bool(b) => Value::Bool(*b),
                    Claim::Null => Value::Null,
                    Claim::Nested(v) => v.clone(),
                });
                prop_assert_eq!(got.as_ref(), Some(v), "key {:?}", k);
                // and its text is what the map value prints (identity headers, replay key)
                prop_assert_eq!(m.get(k).map(Claim::to_json), Some(v.to_string()));
            }
        }
        // a repeated top-level key is kept by the member parse, for the caller to refuse
        (Err(JsonError::DuplicateKey), Ok(m)) => prop_assert!(m.has_duplicates()),
        // on valid JSON the same error; on broken JSON both refuse, but which fault is met
        // first may differ (a repeated key before a syntax error: the map parse stops at the
        // repeat, the member parse reads on to the syntax error)
        (Err(a), Err(b)) if serde_json::from_slice::<Value>(bytes).is_ok() => prop_assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(false, "strict {:?} vs members {:?}", strict, members),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(20_000),
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn member_parse_agrees_with_the_strict_map_parse(frags in prop::collection::vec(fragment(), 0..16)) {
        agree(&frags.concat())?;
    }

    #[test]
    fn member_parse_agrees_on_objects(frags in prop::collection::vec(fragment(), 0..16)) {
        // most random strings are not objects; these always start like one
        agree(&[&b"{"[..], &frags.concat(), b"}"].concat())?;
    }
}

#[test]
fn known_cases_agree() {
    for input in [
        r#"{"sub":"a","iat":1,"exp":1.5,"x":{"y":[1,{"z":null}]}}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"x":{"a":1,"a":2}}"#,
        r#"[{"a":1,"a":2}]"#,
        r#"{"a":18446744073709551615,"b":-9223372036854775808,"c":1e400}"#,
        "[]",
        "{} {}",
    ] {
        agree(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
    }
}
