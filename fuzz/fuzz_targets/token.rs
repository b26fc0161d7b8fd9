//! Any bytes as a token: verification answers Ok or a reason, never panics, and never
//! accepts a token whose signature it was not given (the key below signs nothing here).
#![no_main]
use jwt_gate::login::keys::VerifyKey;
use jwt_gate::login::verify::{AuditInfo, Verifier};
use jwt_gate::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifiers() -> &'static [Verifier] {
    static V: OnceLock<Vec<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        ["HS256", "HS512"]
            .iter()
            .map(|alg| {
                let text = format!(
                    "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nalgorithm = \"{alg}\"\nsecret = \"fuzz-secret-0123456789abcdefghijklmnop-0123456789abcdefghijklmnop\"\n[replay]\nreject_issued_before_start = false\n"
                );
                let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
                let (key, _) =
                    VerifyKey::load(cfg.provider.algorithm, &cfg.provider.secret.0, false)
                        .unwrap_or_else(|e| panic!("{e}"));
                Verifier::new(&cfg, key, None)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for v in verifiers() {
        let mut audit = AuditInfo::default();
        let r = v.verify(token, 1_700_000_000, &mut audit, &mut ());
        assert!(r.is_err(), "an unsigned fuzz input verified: {token:?}");
    }
});
