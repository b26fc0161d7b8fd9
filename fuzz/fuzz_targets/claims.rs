//! Header and claims are fuzzed, then *correctly signed*, so the fuzzer gets past the
//! signature into the JSON, claim and identity-header checks. Invariants: no panic; an
//! accepted token's identity values carry no CR, LF or NUL (they become HTTP headers).
#![no_main]
use aws_lc_rs::hmac;
use jwt_gate::login::encoding::b64url_encode;
use jwt_gate::login::keys::VerifyKey;
use jwt_gate::login::verify::{AuditInfo, Verifier};
use jwt_gate::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret-0123456789abcdefghijklmnop";
const NOW: i64 = 1_700_000_000;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n[replay]\nreject_issued_before_start = false\n"
        );
        let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let (key, _) = VerifyKey::load(cfg.provider.algorithm, &cfg.provider.secret.0, false)
            .unwrap_or_else(|e| panic!("{e}"));
        Verifier::new(&cfg, key, None)
    })
}

fuzz_target!(|data: &[u8]| {
    // first byte picks how the header is chosen; the rest is split at the first 0xff
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
        None => (br#"{"alg":"HS256","typ":"JWT"}"#.to_vec(), rest),
    };
    let header = if mode & 1 == 0 {
        br#"{"alg":"HS256"}"#.to_vec()
    } else {
        header
    };
    let input = format!("{}.{}", b64url_encode(&header), b64url_encode(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", b64url_encode(tag.as_ref()));
    let mut audit = AuditInfo::default();
    if let Ok(v) = verifier().verify(&token, NOW, &mut audit, &mut ()) {
        assert!(!v.uid.is_empty(), "accepted without a uid");
        assert!(
            !v.uid.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
            "uid with a control byte: {:?}",
            v.uid
        );
        for (_, value) in &v.identity {
            assert!(
                !value
                    .as_bytes()
                    .iter()
                    .any(|&b| b == b'\r' || b == b'\n' || b == 0),
                "identity header value with a control byte: {value:?}"
            );
        }
        assert!(
            v.expires_at >= NOW,
            "accepted a token that is already out of its window"
        );
    }
});
