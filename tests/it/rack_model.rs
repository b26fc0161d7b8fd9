//! Property: whenever the gate extracts a token from a query string, Rack 2.2 (as GitLab
//! runs it) would hand GitLab exactly that string as `params['jwt']`. Rack's rules are
//! modelled here from its source (`Rack::QueryParser#parse_nested_query` and
//! `normalize_params`), independently of the gate's code.

use jwt_gate::login::params::{extract_token, form_decode, Part};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum RackValue {
    Str(String),
    Nil,
    /// an Array or a Hash: GitLab's strategy fails on it
    Nested,
}

/// `params['jwt']` as Rack 2.2 computes it; `Err` where Rack raises (bad escape, type clash).
fn rack_jwt(query: &str) -> Result<Option<RackValue>, ()> {
    let mut jwt: Option<RackValue> = None;
    // DEFAULT_SEP = /[&;] */n
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '&' || c == ';' {
            parts.push(std::mem::take(&mut cur));
            while chars.peek() == Some(&' ') {
                chars.next();
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        if p.is_empty() {
            continue;
        }
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p.as_str(), None),
        };
        // URI.decode_www_form_component raises on an invalid escape; a key that decodes to
        // invalid UTF-8 makes the key regex below raise; a value that does is refused with 400
        // by GitLab's Gitlab::Middleware::HandleMalformedStrings before the strategy runs
        let name = String::from_utf8(form_decode(k.as_bytes()).ok_or(())?).map_err(|_| ())?;
        let v = match v {
            Some(v) => {
                Some(String::from_utf8(form_decode(v.as_bytes()).ok_or(())?).map_err(|_| ())?)
            }
            None => None,
        };
        // name =~ %r(\A[\[\]]*([^\[\]]+)\]*); k = $1 || ''; after = $'
        let rest = name.trim_start_matches(['[', ']']);
        let key_len = rest.find(['[', ']']).unwrap_or(rest.len());
        let key = &rest[..key_len];
        let after = rest[key_len..].trim_start_matches(']');
        if key != "jwt" {
            continue;
        }
        if after.is_empty() {
            jwt = Some(v.map_or(RackValue::Nil, RackValue::Str));
        } else if after == "[" {
            // params[name] = v: stored under "jwt[" (or the like), not "jwt"
        } else {
            // an array or a hash; a String already there makes Rack raise
            if matches!(jwt, Some(RackValue::Str(_))) {
                return Err(());
            }
            jwt = Some(RackValue::Nested);
        }
    }
    Ok(jwt)
}

fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "jwt", "JWT", "jw", "t", "[", "]", "=", "&", ";", " ", "%6A", "%6a", "%5B", "%5D", "%20",
        "+", "a", "tok.en", "%zz", "%", "x=1", "jwt=", "=jwt", "%aa", "%C3", "%A9", "%00",
    ])
}

proptest! {
    // PROPTEST_CASES raises the count for a longer local run
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(20_000),
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn the_gate_never_picks_another_token_than_rack(frags in prop::collection::vec(fragment(), 0..14)) {
        let q: String = frags.concat();
        if let Ok(Some(token)) = extract_token(q.as_bytes(), Part::Query) {
            prop_assert_eq!(rack_jwt(&q), Ok(Some(RackValue::Str(token))), "query {:?}", q);
        }
    }
}

#[test]
fn the_model_agrees_with_rack_on_known_cases() {
    assert_eq!(
        rack_jwt("jwt=a&jwt=b"),
        Ok(Some(RackValue::Str("b".into())))
    );
    assert_eq!(
        rack_jwt("jwt=a;jwt=b"),
        Ok(Some(RackValue::Str("b".into())))
    );
    assert_eq!(rack_jwt("[jwt]=a"), Ok(Some(RackValue::Str("a".into()))));
    assert_eq!(rack_jwt("]]jwt=a"), Ok(Some(RackValue::Str("a".into()))));
    assert_eq!(rack_jwt("jwt]=a"), Ok(Some(RackValue::Str("a".into()))));
    assert_eq!(rack_jwt("%6Awt=a"), Ok(Some(RackValue::Str("a".into()))));
    assert_eq!(rack_jwt("a=1& jwt=b"), Ok(Some(RackValue::Str("b".into()))));
    assert_eq!(rack_jwt("jwt[]=a"), Ok(Some(RackValue::Nested)));
    assert_eq!(rack_jwt("jwt[x]=a"), Ok(Some(RackValue::Nested)));
    assert_eq!(rack_jwt("jwt=a&jwt[]=b"), Err(()));
    assert_eq!(rack_jwt("jwt"), Ok(Some(RackValue::Nil)));
    assert_eq!(rack_jwt("jwt=%zz"), Err(()));
    // a key decoding to invalid UTF-8: Rack's key regex raises on the broken string
    assert_eq!(rack_jwt("jwt=&%aa"), Err(()));
    // and the gate refuses every one of those that Rack resolves to something else than the
    // first plain `jwt`
    for q in [
        "jwt=a&jwt=b",
        "jwt=a;jwt=b",
        "[jwt]=a",
        "]]jwt=a",
        "jwt]=a",
        "%6Awt=a",
        "a=1& jwt=b",
        "jwt[]=a",
        "jwt=a&jwt[]=b",
        "jwt=&%aa",
    ] {
        assert!(extract_token(q.as_bytes(), Part::Query).is_err(), "{q}");
    }
}
