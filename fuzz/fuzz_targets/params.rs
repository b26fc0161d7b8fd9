//! Callback parameter extraction on any bytes: never panics, and whatever it returns agrees
//! with a plain reading of the input (an accepted token occurs once, under exactly `jwt`).
#![no_main]
use jwt_gate::login::params::{extract_token, form_decode, Part};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for part in [Part::Query, Part::Body] {
        if let Ok(Some(token)) = extract_token(data, part) {
            // exactly one pair has the key `jwt`, and its decoded value is the token
            let pairs: Vec<&[u8]> = data
                .split(|&b| b == b'&')
                .filter(|p| !p.is_empty())
                .collect();
            let jwt: Vec<&[u8]> = pairs
                .iter()
                .filter_map(|p| p.strip_prefix(b"jwt="))
                .collect();
            assert_eq!(jwt.len(), 1, "token accepted from {} jwt pairs", jwt.len());
            let decoded = form_decode(jwt[0]).unwrap_or_default();
            assert_eq!(
                decoded,
                token.as_bytes(),
                "token differs from its one jwt pair"
            );
            if part == Part::Query {
                assert!(!data.contains(&b';'));
            }
        }
    }
});
